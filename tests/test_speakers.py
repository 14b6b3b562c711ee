"""Who speaks: espeak-ng dialogues of two and three voices -> one speaker per utterance, turns
where they were made, the same person across files of an archive, enrolled voices named; the
ported speaker encoder against its source; the benchmark's DER scorer on hand-computed cases.
No Ray here (test_speakers_batch.py runs the jobs)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mediagen
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mmsa_ray import speaker_encoder
from mmsa_ray.batch.speakers import (
    FILE_SPEAKERS_SUFFIX,
    SPEAKERS_FILE,
    archive_speakers,
    enrolled_voices,
    file_speakers_table,
)
from mmsa_ray.speakers import SpeakerConfig, VoiceTrack, cluster, speaker_confidence, voice_stretches
from mmsa_ray.speech import SpeechConfig, SpeechRecognizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from der import diarization_error  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

MALE, FEMALE, KLATT = mediagen.VOICES
S = mediagen.TALK_SENTENCES


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer(SpeechConfig())


def write_dialogue(path: Path, turns: list[tuple[str, str]], video: bool = False) -> list[tuple]:
    """The dialogue as a 16 kHz wav (or an mp4 with video and AAC) -> its reference turns."""
    audio, spans = mediagen.dialogue(turns, path.parent)
    if video:
        mediagen.write_video(path, seconds=len(audio) / 16000, width=64, height=48, fps=10,
                             audio=(16000, 1, "aac"), audio_samples=audio[None])
    else:
        mediagen.write_audio(path, rate=16000, channels=1, samples=audio[None])
    return spans


def diarize(recognizer, path: Path, **config):
    voices = VoiceTrack(SpeakerConfig(**config))
    return recognizer.transcribe(str(path), voices=voices), voices


def check_turns(utterances, spans, voices_expected: int, boundary_s: float = 0.5) -> None:
    """Every utterance lies in one reference turn, its speaker is that turn's voice (one
    speaker per voice), and every turn starts and ends within boundary_s of an utterance's."""
    assert len({u.speaker for u in utterances}) == voices_expected
    voice_of: dict[str, str] = {}
    for u in utterances:
        overlaps = [(min(u.end, b) - max(u.start, a), v) for a, b, v, _ in spans if min(u.end, b) > max(u.start, a)]
        assert len(overlaps) == 1, f"{u.start:.2f}-{u.end:.2f} {u.text!r} spans {len(overlaps)} turns"
        voice = overlaps[0][1]
        assert voice_of.setdefault(u.speaker, voice) == voice, f"{u.speaker} holds two voices"
        assert 0.5 < u.speaker_confidence <= 1
    assert len(set(voice_of.values())) == voices_expected
    for a, b, _, _ in spans:
        assert min(abs(u.start - a) for u in utterances) <= boundary_s
        assert min(abs(u.end - b) for u in utterances) <= boundary_s


def test_port_matches_resemblyzer_and_tells_voices_apart(tmp_path):
    check = json.loads((speaker_encoder.WEIGHTS_DIR / "check.json").read_text())
    assert check["min_cosine"] >= 0.999 and check["parameters"] == 1423616
    assert "Apache License" in (speaker_encoder.WEIGHTS_DIR / "LICENSE").read_text()
    from scipy.signal import resample_poly

    def voice(v, text):
        return resample_poly(mediagen.espeak(text, tmp_path, v), 16000, mediagen.ESPEAK_RATE).astype(np.float32)

    clips = [voice(v, s) for v in (MALE, FEMALE) for s in S[:2]]
    edges = np.cumsum([0] + [len(c) for c in clips]).tolist()
    e = speaker_encoder.embed_stretches(np.concatenate(clips), list(zip(edges[:-1], edges[1:], strict=True)))
    assert e.shape == (4, 256) and np.allclose(np.linalg.norm(e, axis=1), 1) and (e >= 0).all()
    assert e[0] @ e[1] > 0.8 and e[2] @ e[3] > 0.8 and e[0] @ e[2] < 0.75


def test_stretches_cluster_and_confidence():
    config = SpeakerConfig(max_stretch_s=3.0)
    words = [(0.0, 0.4), (0.45, 0.9), (1.2, 1.6), (1.62, 2.5), (2.52, 4.0), (4.05, 7.0)]
    assert voice_stretches(words, config) == [(0.0, 0.9), (1.2, 4.0), (4.05, 7.0)]
    assert voice_stretches([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)], config) == [(0.0, 2.0), (2.0, 4.0)]
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    x = np.stack([a, a * 0.9 + b * 0.1, b, b * 0.95 + a * 0.05])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = cluster(x, 0.8)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert len(set(cluster(x, 0.8, n=1))) == 1 and len(set(cluster(x, 0.99, hi=2))) == 2
    apart = cluster(x, 0.5, cannot_link=np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], bool))
    assert apart[0] != apart[1]
    assert speaker_confidence(np.array([0.9, 0.6]), 0, 0.78) == pytest.approx(1 / (1 + np.exp(-2.4)))
    assert speaker_confidence(np.array([0.6, 0.9]), 0, 0.78) < 0.01
    with pytest.raises(ValueError, match="min_speakers <= max_speakers"):
        SpeakerConfig(min_speakers=3, max_speakers=2)
    with pytest.raises(ValueError, match="cosine similarity"):
        SpeakerConfig(threshold=1.5)


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory) -> dict[str, tuple[Path, list[tuple]]]:
    d = tmp_path_factory.mktemp("dialogues")
    two = [((MALE, FEMALE)[i % 2], S[i]) for i in range(8)]
    three = [((MALE, FEMALE, KLATT)[i % 3], S[10 + i]) for i in range(9)]
    one = [(MALE, S[20 + i]) for i in range(4)]
    return {"two": (d / "two.wav", write_dialogue(d / "two.wav", two)),
            "two_video": (d / "two.mp4", write_dialogue(d / "two.mp4", two, video=True)),
            "three": (d / "three.wav", write_dialogue(d / "three.wav", three)),
            "one": (d / "one.wav", write_dialogue(d / "one.wav", one))}


@pytest.mark.slow
def test_two_and_three_voices_one_speaker_per_utterance(recognizer, dialogues):
    for name, voices in (("two", 2), ("two_video", 2), ("three", 3)):
        path, spans = dialogues[name]
        utterances, track = diarize(recognizer, path)
        check_turns(utterances, spans, voices)
        assert [s.speaker for s in track.speakers] == [f"S{k + 1}" for k in range(voices)]
        assert utterances[0].speaker == "S1"
        reference = [(a, b, v) for a, b, v, _ in spans]
        hypothesis = [(u.start, u.end, u.speaker) for u in utterances]
        assert diarization_error(reference, hypothesis).rate < 0.1, name


@pytest.mark.slow
def test_one_voice_is_one_speaker_and_silence_none(recognizer, dialogues, tmp_path):
    path, spans = dialogues["one"]
    utterances, track = diarize(recognizer, path)
    assert {u.speaker for u in utterances} == {"S1"} and len(track.speakers) == 1
    assert track.speakers[0].speech_s == pytest.approx(sum(b - a for a, b, _, _ in spans), rel=0.2)
    music = mediagen.write_audio(tmp_path / "music.wav", seconds=6.0, rate=16000, channels=1, freq=330)
    quiet = mediagen.write_audio(tmp_path / "quiet.wav", seconds=4.0, rate=16000, channels=1, amplitude=0)
    for path in (music, quiet):
        utterances, track = diarize(recognizer, path)
        assert utterances == [] and track.speakers == []


@pytest.mark.slow
def test_given_number_of_speakers(recognizer, dialogues):
    path, _ = dialogues["three"]
    utterances, _ = diarize(recognizer, path, num_speakers=2)
    assert len({u.speaker for u in utterances}) == 2
    utterances, _ = diarize(recognizer, path, max_speakers=2)
    assert len({u.speaker for u in utterances}) == 2


@pytest.mark.slow
def test_archive_ids_across_files_enrolment_and_rerun(recognizer, tmp_path):
    """Two files of the same two voices share their speaker_ids; a third voice gets its own;
    enrolled voices are named, the one not enrolled is not; a second run keeps every id."""
    cache = tmp_path / "cache"
    cache.mkdir()
    fs = pafs.LocalFileSystem()

    def add(name: str, turns):
        path = tmp_path / f"{name}.wav"
        write_dialogue(path, turns)
        _, track = diarize(recognizer, path)
        pq.write_table(file_speakers_table(name, track.speakers), cache / f"{name}{FILE_SPEAKERS_SUFFIX}")
        return track

    add("a", [((MALE, FEMALE)[i % 2], S[i]) for i in range(6)])
    add("b", [((FEMALE, MALE)[i % 2], S[12 + i]) for i in range(6)])
    enrol = tmp_path / "people"
    for person, voice in (("alice", FEMALE), ("bob", MALE)):
        (enrol / person).mkdir(parents=True)
        audio, _ = mediagen.dialogue([(voice, S[25]), (voice, S[26])], tmp_path)
        mediagen.write_audio(enrol / person / "clip.wav", rate=16000, channels=1, samples=audio[None])
    voices = enrolled_voices(str(enrol))
    assert sorted(voices) == ["alice", "bob"]

    config = SpeakerConfig()
    first = archive_speakers(fs, str(tmp_path), str(cache), config, voices)
    table = pq.read_table(tmp_path / SPEAKERS_FILE).to_pylist()
    ids = {(r["file_id"], r["speaker"]): r["speaker_id"] for r in table}
    names = {r["speaker_id"]: r["name"] for r in table}
    assert first.speakers == 2 and first.files == 2 and len(table) == 4
    # a's S1 is the male voice, b's S1 the female one
    assert ids[("a", "S1")] == ids[("b", "S2")] != ids[("a", "S2")] == ids[("b", "S1")]
    assert names[ids[("a", "S1")]] == "bob" and names[ids[("a", "S2")]] == "alice"
    assert all(len(r["centroid"]) == 256 and r["speech_s"] > 3 for r in table)

    add("c", [((KLATT, MALE)[i % 2], S[6 + i]) for i in range(4)])
    second = archive_speakers(fs, str(tmp_path), str(cache), config, voices)
    again = {(r["file_id"], r["speaker"]): r for r in pq.read_table(tmp_path / SPEAKERS_FILE).to_pylist()}
    assert {k: again[k]["speaker_id"] for k in ids} == ids  # ids already given are kept
    assert second.speakers == 3 and second.new == 1
    assert again[("c", "S2")]["speaker_id"] == ids[("a", "S1")]  # the male voice again
    assert again[("c", "S1")]["speaker_id"] not in ids.values() and again[("c", "S1")]["name"] is None
    assert "3 across 3 files (1 new this run" in str(second)
    # the enrolment threshold's false-match rate here: every file voice against every enrolled one
    truth = {("a", "S1"): "bob", ("a", "S2"): "alice", ("b", "S1"): "alice", ("b", "S2"): "bob", ("c", "S2"): "bob"}
    pairs = [(truth.get(k) == person, float(np.asarray(r["centroid"]) @ voice))
             for k, r in again.items() for person, voice in voices.items()]
    assert [s >= config.enroll_threshold for same, s in pairs if same] == [True] * 5
    assert [s for same, s in pairs if not same and s >= config.enroll_threshold] == []  # 0 of 7 false matches


def test_enrolment_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        enrolled_voices(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="nowhere: not a directory"):
        SpeakerConfig(enroll_dir=str(tmp_path / "nowhere"))
    (tmp_path / "carol").mkdir()
    with pytest.raises(ValueError, match="holds no clips"):
        enrolled_voices(str(tmp_path))
    mediagen.write_audio(tmp_path / "carol" / "quiet.wav", seconds=2.0, rate=16000, channels=1, amplitude=0)
    with pytest.raises(ValueError, match="quiet.wav: no speech found"):
        enrolled_voices(str(tmp_path))
    (tmp_path / "carol" / "quiet.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="quiet.wav"):
        enrolled_voices(str(tmp_path))


def test_der_scorer_on_hand_computed_cases():
    ref = [(0.0, 2.0, "A"), (2.0, 4.0, "B")]
    assert diarization_error(ref, [(0.0, 2.0, "x"), (2.0, 4.0, "y")]).rate == pytest.approx(0.0)
    # all one speaker: B's 2 s confused; the collar takes 0.25 s each side of 0, 2 and 4 s
    e = diarization_error(ref, [(0.0, 4.0, "x")])
    assert e.reference_s == pytest.approx(4.0 - 0.25 - 0.5 - 0.25, abs=0.02)
    assert e.confusion_s == pytest.approx(1.5, abs=0.02) and e.rate == pytest.approx(0.5, abs=0.01)
    # no collar: half of B missed, 1 s of false alarm after the end
    e = diarization_error(ref, [(0.0, 2.0, "x"), (2.0, 3.0, "y"), (4.0, 5.0, "y")], collar_s=0.0)
    assert (e.missed_s, e.false_alarm_s, e.confusion_s) == pytest.approx((1.0, 1.0, 0.0), abs=0.02)
    assert e.rate == pytest.approx(0.5, abs=0.01)
    # overlap: both speak 1-2 s, the hypothesis has only A there: 1 s missed
    e = diarization_error([(0.0, 2.0, "A"), (1.0, 3.0, "B")], [(0.0, 2.0, "p"), (2.0, 3.0, "q")], collar_s=0.0)
    assert e.reference_s == pytest.approx(4.0, abs=0.02) and e.missed_s == pytest.approx(1.0, abs=0.02)
    assert e.confusion_s == pytest.approx(0.0, abs=0.02)


@pytest.mark.slow
def test_speech_stage_marks_context_by_speaker_and_the_model_reads_it(tmp_path, dialogues, small_model_config):
    """label's speech stage with speakers: each item's context transcripts marked [same] or
    [other] (never names) for a checkpoint that reads them, the file's speakers cached beside
    its utterances, and the markers in the token ids the model gets."""
    import dataclasses

    import pyarrow as pa

    from mmsa_ray import checkpoint
    from mmsa_ray.batch.staging import STAGING_SCHEMA
    from mmsa_ray.batch.utterances import SpeechStage
    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.model import MultimodalSentimentModel
    from mmsa_ray.predict import Preprocessing

    path, _ = dialogues["two"]
    (tmp_path / "att").mkdir()
    stage = SpeechStage(speech=SpeechConfig(cpu_threads=1), cache=str(tmp_path / "cache"),
                        attempts_uri=str(tmp_path / "att"), max_attempts=2, context_turns=2, speakers=SpeakerConfig(),
                        context_speakers=True, future_turns=1)
    rows = pa.Table.from_pylist([{"id": "two.wav", "uri": str(path), "transcript": None, "start": None, "end": None}],
                                schema=STAGING_SCHEMA)
    items = sorted(stage(rows).to_pylist(), key=lambda r: r["start"])
    assert [it["speaker"] for it in items] == ["S1", "S2"] * 4
    assert items[0]["context"] == [] and items[1]["context"] == [f"[other] {items[0]['transcript']}"]
    assert items[2]["context"] == [f"[same] {items[0]['transcript']}", f"[other] {items[1]['transcript']}"]
    assert items[2]["future"] == [f"[other] {items[3]['transcript']}"] and items[-1]["future"] == []
    (cached,) = (tmp_path / "cache").glob(f"*{FILE_SPEAKERS_SUFFIX}")
    assert pq.read_table(cached).column("speaker").to_pylist() == ["S1", "S2"]

    config = dataclasses.replace(small_model_config, modalities=("text",),
                                 features=FeatureConfig(context_turns=2, context_speakers=True))
    checkpoint.save(MultimodalSentimentModel(config), str(tmp_path / "ckpt"))
    pre = Preprocessing.from_checkpoint(tmp_path / "ckpt")
    it = items[2]
    ids = pre(it["uri"], it["transcript"], it["start"], it["end"], context=it["context"])["input_ids"]
    text = pre.tokenizer.decode([i for i in ids if i != pre.tokenizer.pad_token_id])
    # newest context first (features.py: truncation cuts the oldest), each behind its marker
    for marker, said in (("[ other ]", items[1]["transcript"]), ("[ same ]", items[0]["transcript"])):
        assert f"{marker} {said.lower()}" in text, text


def test_serve_utterance_windows_read_both_sides_with_their_speakers():
    """Each utterance of an upload: the caller's context then the upload's earlier readable
    utterances before it; the upload's later ones then the caller's future after it."""
    from mmsa_ray.serve.request import UploadForm, marked_texts, utterance_windows

    utts = [{"start": 0.0, "end": 1.0, "transcript": "Hi.", "transcript_reliable": True, "speaker": "S1"},
            {"start": 1.5, "end": 2.0, "transcript": "mumble", "transcript_reliable": False, "speaker": "S2"},
            {"start": 2.5, "end": 3.0, "transcript": "Bye.", "transcript_reliable": True, "speaker": "S2"}]
    form = UploadForm(upload=None, transcript=None, start=None, end=None, transcribe=True, context=["Before."],
                      context_speakers=["S2"], future=["After."], future_speakers=[None])
    first, unreliable, last = utterance_windows(utts, form)
    assert (first["context"], first["future"]) == (["Before."], ["Bye.", "After."])
    assert unreliable["transcript"] is None and unreliable["context"] == ["Before.", "Hi."]
    assert (last["context"], last["future"]) == (["Before.", "Hi."], ["After."])
    assert marked_texts(first, "context", True) == ["[other] Before."]
    assert marked_texts(last, "context", True)[1] == "[other] Hi."
    assert marked_texts(first, "future", True) == ["[other] Bye.", "After."]
    assert marked_texts(first, "future", False)[0] == "Bye."


def test_serve_context_items_may_say_who_spoke():
    from mmsa_ray.serve.request import RequestError, context_field

    form = {"context": '["Hi.", {"text": "Who is it?", "speaker": "S2"}, {"text": " "}]'}
    assert context_field(form) == [("Hi.", None), ("Who is it?", "S2")]
    assert context_field({"context": "one\n\ntwo"}) == [("one", None), ("two", None)]
    for bad in ('[{"text": "x", "speaker": 3}]', '[{"words": "x"}]', "[1]"):
        with pytest.raises(RequestError, match="JSON list of strings or of"):
            context_field({"context": bad})
