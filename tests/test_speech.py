"""The speech stage on real speech: espeak-ng sentences with known silences between them,
in audio-only files and muxed with a video track, through the offline Whisper tiny.en."""

from __future__ import annotations

import itertools
import math
import shutil
import sys
import tracemalloc
from pathlib import Path

import av
import jiwer
import numpy as np
import pytest

from mmsa_ray.media import MediaError, stream_audio
from mmsa_ray.speech import SpeechConfig, SpeechRecognizer, speech_chunks
from mmsa_ray.utterances import TimedWord, Utterance, Word, build_utterances, utterance_rows

sys.path.insert(0, str(Path(__file__).parent))
import mediagen  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I am very happy to see you here today.",
    "Please bring the red umbrella when it rains.",
]
GAP_S = 1.5  # silence between sentences
LEAD_S, TAIL_S = 0.7, 0.8  # silence before the first and after the last
ESPEAK_RATE = mediagen.ESPEAK_RATE

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _resample(x: np.ndarray, rate: int) -> np.ndarray:
    if rate == ESPEAK_RATE:
        return x
    t = np.arange(round(len(x) * rate / ESPEAK_RATE)) / rate
    return np.interp(t, np.arange(len(x)) / ESPEAK_RATE, x).astype(np.float32)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Three sentences separated by GAP_S of silence, as wav, mp3, opus and an mp4 with video.
    -> {"files": {kind: path}, "spans": [(start, end) seconds of each sentence's speech], "duration"}."""
    d = tmp_path_factory.mktemp("speech")
    parts, spans, t = [np.zeros(int(LEAD_S * ESPEAK_RATE), np.float32)], [], LEAD_S
    for i, s in enumerate(SENTENCES):
        x = mediagen.espeak(s, d)
        parts.append(x)
        spans.append((t, t + len(x) / ESPEAK_RATE))
        t += len(x) / ESPEAK_RATE
        gap = GAP_S if i + 1 < len(SENTENCES) else TAIL_S
        parts.append(np.zeros(int(gap * ESPEAK_RATE), np.float32))
        t += int(gap * ESPEAK_RATE) / ESPEAK_RATE
    wave = np.concatenate(parts) * 0.8
    duration = len(wave) / ESPEAK_RATE
    files = {
        "wav": mediagen.write_audio(d / "speech.wav", rate=ESPEAK_RATE, channels=1, samples=wave[None]),
        "mp3": mediagen.write_audio(d / "speech.mp3", rate=ESPEAK_RATE, channels=1, samples=wave[None]),
        "opus": mediagen.write_audio(d / "speech.opus", rate=48000, channels=2,
                                     samples=np.repeat(_resample(wave, 48000)[None], 2, axis=0)),
        "mp4": mediagen.write_video(d / "speech.mp4", seconds=duration, width=96, height=64, fps=10,
                                    audio=(44100, 1, "aac"), audio_samples=_resample(wave, 44100)[None]),
    }
    return {"files": files, "spans": spans, "duration": duration, "wave": wave, "dir": d}


@pytest.fixture(scope="module")
def recognizer():
    return SpeechRecognizer(SpeechConfig())


def _wer(utterances: list[Utterance], sentences: list[str]) -> float:
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                          jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(" ".join(sentences), " ".join(u.text for u in utterances),
                     reference_transform=norm, hypothesis_transform=norm)


@pytest.mark.parametrize("kind", ["wav", "mp3", "opus", "mp4"])
def test_sentences_come_back_as_utterances(speech, recognizer, kind):
    utts = recognizer.transcribe(speech["files"][kind])
    assert len(utts) == len(SENTENCES), [u.text for u in utts]
    assert _wer(utts, SENTENCES) <= 0.15, [u.text for u in utts]
    for u, (start, end) in zip(utts, speech["spans"], strict=True):
        assert abs(u.start - start) <= 0.3 and abs(u.end - end) <= 0.3, (u.start, u.end, start, end)
        assert u.words and u.words[0].start == u.start and u.words[-1].end == u.end
        assert all(w.start <= w.end for w in u.words)
        assert all(0 <= w.probability <= 1 and w.word == w.word.strip() for w in u.words)
        assert -2.0 < u.avg_logprob <= 0 and 0 <= u.no_speech_prob <= 1


def test_window_is_in_file_time(speech, recognizer):
    (s1, e1), (s2, e2), _ = speech["spans"]
    utts = recognizer.transcribe(speech["files"]["mp4"], start=e1 + 0.5, end=e2 + 0.5)
    assert len(utts) == 1
    assert _wer(utts, SENTENCES[1:2]) <= 0.2, utts[0].text
    assert abs(utts[0].start - s2) <= 0.3 and abs(utts[0].end - e2) <= 0.3


def test_bytes_and_file_objects(speech, recognizer):
    data = speech["files"]["mp3"].read_bytes()
    from_bytes = recognizer.transcribe(data)
    with open(speech["files"]["mp3"], "rb") as f:
        from_file = recognizer.transcribe(f)
    from_uri = recognizer.transcribe(f"file://{speech['files']['mp3']}")
    assert [u.text for u in from_bytes] == [u.text for u in from_file] == [u.text for u in from_uri]
    assert len(from_bytes) == len(SENTENCES)


def test_music_and_noise_give_no_utterances(tmp_path, recognizer):
    rate = 16000
    t = np.arange(6 * rate) / rate
    # a chord progression with a beat, then white noise
    notes = [261.6, 329.6, 392.0, 440.0, 523.3]
    music = sum(np.sin(2 * np.pi * f * t * (1 + 0.5 * (t // 1.5 % 2))) for f in notes) / len(notes)
    music *= 0.6 * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0))
    noise = np.random.default_rng(0).standard_normal(6 * rate) * 0.1
    wave = np.concatenate([music, noise]).astype(np.float32)
    path = mediagen.write_audio(tmp_path / "music.wav", rate=rate, channels=1, samples=wave[None])
    assert recognizer.transcribe(path) == []
    silent = mediagen.write_video(tmp_path / "silent.mp4", seconds=3, width=64, height=48, audio=(16000, 1, "aac"),
                                  audio_samples=np.zeros((1, 48000), np.float32))
    assert recognizer.transcribe(silent) == []


def test_unreadable_sources_raise_media_error(tmp_path, recognizer):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a media file " * 100)
    with pytest.raises(MediaError, match="junk.mp4: not a readable media file"):
        recognizer.transcribe(junk)
    with pytest.raises(MediaError, match="no such file"):
        recognizer.transcribe(tmp_path / "missing.wav")
    video_only = mediagen.write_video(tmp_path / "video_only.mp4", seconds=1, width=64, height=48)
    with pytest.raises(MediaError, match="video_only.mp4: no audio stream"):
        recognizer.transcribe(video_only)


def _w(start: float, end: float, text: str) -> TimedWord:
    return TimedWord(start, end, " " + text, 0.9, -0.2, 0.01)


def test_utterance_rules():
    config = SpeechConfig(pause_s=0.5, min_utterance_s=1.0, max_utterance_s=4.0)
    # split at the 0.8 s pause; "oh" (0.3 s, alone after a 0.6 s pause) is merged into the
    # neighbour across the smaller gap (the one after it, 0.55 s)
    words = [_w(0.0, 0.5, "hello"), _w(0.6, 1.2, "there."), _w(2.0, 2.5, "how"), _w(2.6, 3.1, "are"),
             _w(3.2, 3.6, "you?"), _w(4.2, 4.5, "oh"), _w(5.05, 5.6, "fine"), _w(5.7, 6.3, "thanks.")]
    utts = build_utterances(words, config)
    assert [u.text for u in utts] == ["hello there.", "how are you?", "oh fine thanks."]
    assert [(u.start, u.end) for u in utts] == [(0.0, 1.2), (2.0, 3.6), (4.2, 6.3)]
    # one long run without pauses >= 0.5 s: split at its largest gap, a sentence end winning a tie
    run = [_w(i * 0.5, i * 0.5 + 0.4, f"w{i}" + ("." if i == 7 else "")) for i in range(20)]  # 0..9.9 s
    pieces = build_utterances(run, config)
    assert all(u.end - u.start <= 4.0 for u in pieces)
    assert pieces[0].text.endswith("w7.") or any(u.text.endswith("w7.") for u in pieces)
    assert sum(len(u.words) for u in pieces) == 20
    assert build_utterances([], config) == []


def test_utterance_rows():
    u = Utterance(1.23456, 3.5, "Hi there.", [Word(1.23456, 2.0, "Hi", 0.5), Word(2.1, 3.5, "there.", 0.75)],
                  avg_logprob=math.log(0.8), no_speech_prob=0.02)
    (row,) = utterance_rows("talks/a.mp4", [u])
    assert row["id"] == "talks/a.mp4#t=1.235,3.500"
    assert (row["start"], row["end"], row["transcript"]) == (1.235, 3.5, "Hi there.")
    assert row["words"][1] == {"start": 2.1, "end": 3.5, "word": "there.", "probability": 0.75}
    assert row["asr_confidence"] == pytest.approx(0.8) and row["no_speech_prob"] == 0.02


def test_config_cache_key():
    a = SpeechConfig()
    assert a.cache_key() == SpeechConfig(cpu_threads=4).cache_key()  # threads do not change the output
    assert a.cache_key() != SpeechConfig(model="small.en").cache_key()
    assert a.cache_key() != SpeechConfig(pause_s=0.7).cache_key()
    assert a.resolved_compute_type() == "int8"
    assert SpeechConfig(device="cuda").resolved_compute_type() == "float16"
    with pytest.raises(ValueError, match="min_utterance_s"):
        SpeechConfig(min_utterance_s=5, max_utterance_s=2)


def test_stream_audio_chunks_are_decode_clip_audio(speech):
    from mmsa_ray.media import DecodeConfig, decode_clip

    path = speech["files"]["mp4"]
    whole = decode_clip(path, config=DecodeConfig(num_frames=1)).audio
    chunks = list(stream_audio(path, chunk_s=1.0))
    assert all(len(w) == 16000 for _, w in chunks[:-1])
    assert [t for t, _ in chunks] == pytest.approx(np.arange(len(chunks)) * 1.0)
    streamed = np.concatenate([w for _, w in chunks])
    # decode_clip stops at the container's duration (the video's end here); the stream runs
    # to the audio's own end (AAC padding: a few ms more)
    assert 0 <= len(streamed) - len(whole) < 0.05 * 16000
    np.testing.assert_array_equal(streamed[:len(whole)], whole)
    # a window: the same samples as decode_clip's window
    part = decode_clip(path, 1.25, 3.75, DecodeConfig(num_frames=1)).audio
    chunks = list(stream_audio(path, 1.25, 3.75, chunk_s=1.0))
    assert [t for t, _ in chunks] == pytest.approx([1.25, 2.25, 3.25])
    np.testing.assert_allclose(np.concatenate([w for _, w in chunks]), part, atol=1e-6)


# distinct sentences for the long files (Whisper conditions on earlier text: a repeated
# passage invites it to "continue" the repetition, which no real recording asks of it)
STORY = mediagen.TALK_SENTENCES[:12]  # sentences with known text, said one after another


def _story(tmp, rate: int, gap_s: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """STORY spoken with gap_s of silence after each sentence: (float32 [N] at rate, spans)."""
    parts, spans, t = [np.zeros(int(0.5 * rate), np.float32)], [], 0.5
    for s in STORY:
        x = _resample(mediagen.espeak(s, tmp), rate) * 0.8
        parts += [x, np.zeros(int(gap_s * rate), np.float32)]
        spans.append((t, t + len(x) / rate))
        t += (len(x) + int(gap_s * rate)) / rate
    return np.concatenate(parts), spans


@pytest.mark.slow
def test_chunk_borders_cut_in_silence(recognizer, tmp_path):
    """Chunks of 20 s over a minute of speech with 1 s pauses: every border falls within
    10 s of a pause, the pieces are cut in those pauses, and every sentence comes back
    once with its times."""
    wave, spans = _story(tmp_path, ESPEAK_RATE, 1.0)
    path = mediagen.write_audio(tmp_path / "story.mp3", rate=ESPEAK_RATE, channels=1, samples=wave[None])
    pieces = list(speech_chunks(str(path), None, None, 20.0))
    assert len(pieces) >= 3
    for (t, audio), (t_next, _) in itertools.pairwise(pieces):
        cut = t + len(audio) / 16000
        assert cut == pytest.approx(t_next)
        assert not any(s + 0.05 < cut < e - 0.05 for s, e in spans), (cut, spans)  # never inside a sentence
    chunker = SpeechRecognizer.__new__(SpeechRecognizer)  # the loaded model, another config
    chunker.config, chunker.model = SpeechConfig(chunk_s=20.0), recognizer.model
    utts = chunker.transcribe(path)
    assert _wer(utts, STORY) <= 0.1, [u.text for u in utts]
    assert len(utts) == len(STORY), [u.text for u in utts]
    for u, (start, end) in zip(utts, spans, strict=True):
        assert abs(u.start - start) <= 0.3 and abs(u.end - end) <= 0.3, (u.start, u.end, start, end, u.text)


@pytest.mark.slow
def test_long_file_in_bounded_memory(recognizer, tmp_path):
    """20 minutes (low noise with a sentence every 100 s): the peak of Python-visible
    memory (numpy buffers included) while transcribing in 60 s chunks stays far below the
    decoded audio, and the sentences come back at their times."""
    rate = ESPEAK_RATE  # written at espeak's rate: our decoder resamples it to 16 kHz
    minutes = 20
    said = [(mediagen.espeak(s, tmp_path) * 0.8, s) for s in STORY]
    path = tmp_path / "talk.wav"
    rng = np.random.default_rng(1)
    expect = []
    with av.open(str(path), "w") as c:  # written in pieces: the test itself stays small too
        s = c.add_stream("pcm_s16le", rate=rate)
        s.layout = "mono"
        for k in range(minutes * 6):  # 10 s blocks
            block = (rng.standard_normal(10 * rate) * 0.002).astype(np.float32)
            if k % 10 == 5:
                x, text = said[(k // 10) % len(said)]
                block[rate:rate + len(x)] += x
                expect.append((k * 10 + 1, text))
            frame = av.AudioFrame.from_ndarray(block[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, k * 10 * rate
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    whole = minutes * 60 * 16000 * 4  # bytes of the decoded audio (float32, 16 kHz)
    chunker = SpeechRecognizer.__new__(SpeechRecognizer)
    chunker.config, chunker.model = SpeechConfig(chunk_s=60.0), recognizer.model
    tracemalloc.start()
    try:
        utts = chunker.transcribe(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < whole / 3, (peak, whole)
    assert len(utts) == len(expect), [(u.start, u.text) for u in utts]
    assert [u.start for u in utts] == pytest.approx([t for t, _ in expect], abs=0.3)
    # isolated sentences in noise, no neighbouring context: tiny.en mishears one of the twelve
    assert _wer(utts, [text for _, text in expect]) <= 0.2, [u.text for u in utts]


def test_speech_flags_map_onto_config():
    import argparse

    from mmsa_ray.speech import add_speech_args, speech_config_from_args

    parser = argparse.ArgumentParser()
    add_speech_args(parser)
    assert speech_config_from_args(parser.parse_args([])) == SpeechConfig()
    args = parser.parse_args(["--asr-model", "large-v3", "--asr-device", "cuda", "--asr-compute-type", "int8_float16",
                              "--asr-threads", "4", "--asr-language", "auto", "--utterance-pause", "0.7",
                              "--utterance-min", "2", "--utterance-max", "8", "--asr-gap", "3",
                              "--asr-timeout", "600", "0.5"])
    config = speech_config_from_args(args)
    assert (config.model, config.device, config.compute_type, config.cpu_threads, config.language) == (
        "large-v3", "cuda", "int8_float16", 4, None)
    assert (config.pause_s, config.min_utterance_s, config.max_utterance_s) == (0.7, 2.0, 8.0)
    assert (config.min_gap_s, config.timeout_s, config.timeout_per_audio_s) == (3.0, 600.0, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--asr-device", "tpu"])
