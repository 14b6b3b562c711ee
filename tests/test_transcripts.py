"""Transcripts that lose nothing: the same words on every run and at any thread count, every
stretch of speech kept (or shown as "unrecognized"), inventions and other languages caught,
and a transcription that hangs stopped (mmsa_ray.speech, mmsa_ray.transcript_checks)."""

from __future__ import annotations

import shutil
import threading

import jiwer
import mediagen
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from mmsa_ray import transcript_checks
from mmsa_ray.batch import label, transcribe, utterances
from mmsa_ray.batch.staging import STAGING_SCHEMA
from mmsa_ray.speech import SpeechConfig, SpeechRecognizer
from mmsa_ray.utterances import model_transcript, no_speech_reason, utterance_rows

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

NORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                      jiwer.ReduceToListOfListOfWords()])


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(reference, hypothesis, reference_transform=NORM, hypothesis_transform=NORM)


# ----------------------------------------------------------------------------- the checks


def test_repetition_loops_and_compression_are_inventions():
    assert transcript_checks.loop_words("a little bit of a little bit of a little bit of".split()) == 12
    assert transcript_checks.loop_words(["No,", "no,", "no,", "NO!"]) == 4  # a loop of 4 words: speech
    assert transcript_checks.loop_words("we went in and out and in and out".split()) == 0  # twice only
    assert transcript_checks.loop_words([]) == 0
    assert transcript_checks.invented(1.2, ["No,", "no,", "no,", "no!"]) is None
    loop = ("I'm going to do a little bit " * 5).split()
    assert transcript_checks.invented(1.2, loop) == "repetition loop"
    assert transcript_checks.invented(3.1, ["fine"]) == "compression ratio 3.1 > 2.4"
    assert transcript_checks.invented(1.1, "The baker sold warm bread and small apple pies.".split()) is None


def test_uncovered_speech():
    speech = [(0.0, 10.0), (20.0, 21.5)]
    words = [(0.5, 1.0), (1.2, 2.0), (7.0, 8.0)]
    # words widened by 0.5 s: covered 0..2.5 and 6.5..8.5; a 1.5 s region with no word is shorter than 2 s
    assert transcript_checks.uncovered(speech, words, 2.0) == [(2.5, 6.5)]
    assert transcript_checks.uncovered(speech, words, 1.0) == [(2.5, 6.5), (8.5, 10.0), (20.0, 21.5)]
    assert transcript_checks.uncovered(speech, [], 2.0) == [(0.0, 10.0)]
    assert transcript_checks.reliable(0.45) and not transcript_checks.reliable(0.44)


def test_what_the_model_reads_and_why_not():
    assert model_transcript({"transcript": "hi", "transcript_reliable": True}) == "hi"
    assert model_transcript({"transcript": "hi", "transcript_reliable": False}) is None
    assert model_transcript({"transcript": "given in a manifest"}) == "given in a manifest"
    assert no_speech_reason("no transcript", {"speech": "none"}) == "no speech"
    assert no_speech_reason("no transcript", {"speech": "unrecognized"}) == "speech not recognized"
    assert no_speech_reason("no transcript", {"speech": "found", "transcript_reliable": False}) == \
        "transcript unreliable"
    assert no_speech_reason("no transcript, audio or video", {"speech": "none"}) == "no transcript, audio or video"
    assert no_speech_reason(None, {"speech": "found"}) is None


# ----------------------------------------------------------------------------- real speech


@pytest.fixture(scope="module")
def recognizer():
    return SpeechRecognizer(SpeechConfig(cpu_threads=2))


def test_other_languages_are_flagged_not_read_as_english(tmp_path, recognizer):
    """espeak-ng French and German through the English-only default: each stretch is either
    unrecognized (Whisper looped: dropped) or kept with transcript_reliable false."""
    for voice, text in (("fr", "Je ne peux pas croire que tu aies encore fait cela."),
                        ("de", "Das Wetter war heute Morgen herrlich, also gingen wir zum Markt.")):
        x = mediagen.espeak(text, tmp_path, voice)
        path = mediagen.write_audio(tmp_path / f"{voice}.wav", rate=mediagen.ESPEAK_RATE, channels=1,
                                    samples=np.concatenate([np.zeros(8000, np.float32), x * 0.8])[None])
        rows = utterance_rows(voice, recognizer.transcribe(path))
        assert rows, voice
        for r in rows:
            assert r["speech"] == "unrecognized" or r["transcript_reliable"] is False, (voice, r)
            assert model_transcript(r) is None


def test_a_hung_transcription_becomes_an_error_row_and_the_stage_goes_on(tmp_path):
    """A test double for the Whisper model that never returns on the first file: that file
    is an error row naming the limit; the recognizer loads a fresh model and the next file
    is transcribed."""
    wave, _ = mediagen.spoken(["Where did you put my keys?"], rate=16000)
    for name in ("first.wav", "second.wav"):
        mediagen.write_audio(tmp_path / name, rate=16000, channels=1, samples=wave[None])
    (tmp_path / "att").mkdir()
    stage = utterances.SpeechStage(SpeechConfig(cpu_threads=1, timeout_s=3.0, timeout_per_audio_s=0.0),
                                   str(tmp_path / "cache"), str(tmp_path / "att"), max_attempts=2)
    release = threading.Event()

    class Hangs:
        def transcribe(self, *args, **kwargs):
            release.wait()  # stands in for a decoder stuck inside CTranslate2
            raise RuntimeError("released")

    stage.recognizer.model = Hangs()
    rows = [{"id": n, "uri": str(tmp_path / n), "transcript": None, "start": None, "end": None}
            for n in ("first.wav", "second.wav")]
    try:
        items = stage(pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)).to_pylist()
    finally:
        release.set()
    first, second = items
    assert first["id"] == "first.wav" and "past its limit of 3 s" in first["error"]
    assert second["speech"] == "found" and second["transcript"] == "Where did you put my keys?"


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """mediagen.long_talk as a wav in a folder of its own: (folder, [(start, end, text)])."""
    d = tmp_path_factory.mktemp("talk")
    audio, spans = mediagen.long_talk(d)
    (d / "espeak.wav").unlink()
    mediagen.write_audio(d / "talk.wav", rate=16000, channels=1, samples=audio[None])
    return d, spans, audio


def _sentences_once_in_order(rows, spans):
    """Every sentence comes back once and in order: aligned word by word with what was said,
    at least half of each sentence's words are heard where they belong (tiny.en mishears a
    word or two), and hardly a word is heard that was not said (nothing twice)."""
    words = [w for r in rows if r["speech"] == "found" for w in r["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    said = [text for _, _, text in spans]
    aligned = jiwer.process_words(" ".join(said), " ".join(w["word"] for w in words), reference_transform=NORM,
                                  hypothesis_transform=NORM)
    heard = {i for c in aligned.alignments[0] if c.type == "equal" for i in range(c.ref_start_idx, c.ref_end_idx)}
    first = 0
    for text in said:
        n = len(NORM(text)[0])
        assert len(heard & set(range(first, first + n))) >= n / 2, text
        first += n
    assert aligned.insertions <= 0.05 * first, aligned.insertions


@pytest.mark.slow
def test_long_talk_same_words_every_run_at_any_thread_count(ray_local, tmp_path, talk, recognizer, capsys):
    """Ten minutes in three chunks: `transcribe` (1 thread), `label` and the recognizer (2
    threads) give identical utterances; every sentence once and in order, the 20 s over noise
    and those across chunk borders included; the word error rate within 5 points of
    faster-whisper run directly on the whole file."""
    folder, spans, audio = talk
    from mmsa_ray.speakers import VoiceTrack

    direct = utterance_rows("talk.wav", recognizer.transcribe(folder / "talk.wav", voices=VoiceTrack()))
    assert {r["speaker"] for r in direct} == {"S1"}  # one voice, over noise and music too
    _sentences_once_in_order(direct, spans)

    t_out = tmp_path / "transcripts"
    assert transcribe.main([str(folder), "--output", str(t_out), "--asr-threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "speech: " in printed and "(100.0% of the speech heard), 0 stretches unrecognized" in printed
    transcribed = pads.dataset(str(t_out), format="parquet", schema=utterances.UTTERANCE_SCHEMA).to_table()
    l_out = tmp_path / "labels"
    assert label.main([str(folder), "--output", str(l_out)]) == 0
    labeled = pads.dataset(str(l_out), format="parquet", schema=label.LABEL_SCHEMA).to_table()
    keys = ("id", "start", "end", "transcript", "words", "speech", "speaker")
    want = sorted(tuple(str(r[k]) for k in keys) for r in direct)
    for table in (transcribed, labeled):
        assert sorted(tuple(str(r[k]) for k in keys) for r in table.to_pylist()) == want

    from faster_whisper import WhisperModel

    whisper = WhisperModel(SpeechConfig().model_path(), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = whisper.transcribe(audio, language="en", vad_filter=True, word_timestamps=True)
    reference = " ".join(text for _, _, text in spans)
    ours = wer(reference, " ".join(r["transcript"] for r in direct if r["transcript"]))
    theirs = wer(reference, " ".join(s.text for s in segments))
    assert ours <= theirs + 0.05, (ours, theirs)
