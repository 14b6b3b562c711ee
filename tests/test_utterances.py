"""label --utterances and transcribe: espeak-ng speech in a small folder -> one row per spoken
utterance, the same numbers as the Predictor on that window and transcript, no-speech and
error rows, exactly once across re-runs and a kill -9 of the driver during the speech
stage, and never a second transcription of a file (the speech cache under OUT)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import mediagen
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from mmsa_ray.batch import label, transcribe, utterances
from mmsa_ray.batch.staging import STAGING_SCHEMA
from mmsa_ray.labels import EMOTIONS, SENTIMENTS

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TALK = ["I am so happy to see you.", "This is terrible news."]
QUESTION = ["Where did you put my keys?"]
FAST = ["--batch-size", "4", "--decode-batch-size", "2", "--rows-per-file", "2"]


def words_of(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalpha() or c == " ").split()


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    """talk.mp4 (video + two sentences), question.wav (one sentence), quiet.wav (silence),
    mute.mp4 (video without audio), broken.mp4 (not media): 3 utterances, 2 files without
    speech, 1 unreadable file."""
    d = tmp_path_factory.mktemp("speech_in")
    wave, _ = mediagen.spoken(TALK, rate=44100)
    mediagen.write_video(d / "talk.mp4", seconds=len(wave) / 44100, width=64, height=48, fps=10,
                         audio=(44100, 1, "aac"), audio_samples=wave[None])
    wave, _ = mediagen.spoken(QUESTION, rate=16000)
    mediagen.write_audio(d / "question.wav", rate=16000, channels=1, samples=wave[None])
    mediagen.write_audio(d / "quiet.wav", seconds=3.0, rate=16000, channels=1, amplitude=0)
    mediagen.write_video(d / "mute.mp4", seconds=2.0, width=64, height=48, fps=10)
    (d / "broken.mp4").write_bytes(b"this is not a media file " * 100)
    return d


def file_rows(d: Path) -> pa.Table:
    rows = [{"id": p.name, "uri": str(p), "transcript": None, "start": None, "end": None} for p in sorted(d.iterdir())]
    return pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)


def cache_files(out: Path) -> dict[str, int]:
    """{cache file name: mtime_ns} of the speech stage's cached utterances under OUT (not the
    files' speakers beside them)."""
    return {p.name: p.stat().st_mtime_ns for p in (out / utterances.SPEECH_DIR).rglob("*.parquet")
            if not p.name.endswith(".speakers.parquet")}


def read(out: Path, schema: pa.Schema) -> dict[str, dict]:
    rows = pads.dataset(str(out), format="parquet", schema=schema).to_table().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    return {r["id"]: r for r in rows}


def check_utterances(rows: dict[str, dict]) -> None:
    """The folder's rows: the spoken sentences, in time order, one row each, plus the others."""
    spoken = {k: r for k, r in rows.items() if r["speech"] == "found"}
    by_file = {f: sorted((r for r in spoken.values() if r["id"].startswith(f + "#t=")), key=lambda r: r["start"])
               for f in ("talk.mp4", "question.wav")}
    assert len(spoken) == 3 and sum(map(len, by_file.values())) == 3, sorted(spoken)
    for f, sentences in (("talk.mp4", TALK), ("question.wav", QUESTION)):
        assert [words_of(r["transcript"]) for r in by_file[f]] == [words_of(s) for s in sentences]
        for r in by_file[f]:
            assert r["id"] == f"{f}#t={r['start']:.3f},{r['end']:.3f}" and r["error"] is None
            assert 0 < r["asr_confidence"] <= 1
            assert [w["word"] for w in r["words"]] and r["words"][0]["start"] == r["start"]
            assert words_of(" ".join(w["word"] for w in r["words"])) == words_of(r["transcript"])
    (first, second) = by_file["talk.mp4"]
    assert 0.4 <= first["start"] <= 1.0 and first["end"] + 1.0 <= second["start"]  # the 1.5 s pause between
    for f in ("quiet.wav", "mute.mp4"):
        assert rows[f]["speech"] == "none" and rows[f]["transcript"] is None and rows[f]["error"] is None
        assert rows[f]["start"] is None and rows[f]["words"] is None
    assert rows["broken.mp4"]["error"].startswith(f"{rows['broken.mp4']['uri']}: not a readable media file")
    assert rows["broken.mp4"]["speech"] is None
    assert len(rows) == 6


# ----------------------------------------------------------------------------- no Ray


def test_speech_stage_items_cache_context_and_done(tmp_path, speech_dir):
    from mmsa_ray.speech import SpeechConfig

    (tmp_path / "att").mkdir()
    cache = tmp_path / "cache"
    kw = {"speech": SpeechConfig(cpu_threads=1), "cache": str(cache), "attempts_uri": str(tmp_path / "att"),
          "max_attempts": 2, "context_turns": 1}
    stage = utterances.SpeechStage(**kw)
    items = stage(file_rows(speech_dir))
    assert items.schema == utterances.ITEM_SCHEMA
    rows = {r["id"]: r for r in items.to_pylist()}
    check_utterances(rows)
    talk = sorted((r for r in rows.values() if r["file_id"] == "talk.mp4"), key=lambda r: r["start"])
    assert talk[0]["context"] == [] and talk[1]["context"] == [talk[0]["transcript"]]  # earlier ones, at most 1
    cached = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.parquet")}
    assert len(cached) == 5 and not list(cache.glob(".*"))  # one per file, none half-written
    assert list((tmp_path / "att").iterdir()) == []  # no attempt left open

    # a second stage (another actor, a re-run) reads the cache: same items, nothing transcribed
    again = utterances.SpeechStage(**kw)
    again.recognizer = None  # a transcription would fail now
    done = np.array(sorted([talk[0]["id"], "quiet.wav"]), dtype=object)
    again.done = done
    rest = again(file_rows(speech_dir))
    assert sorted(rest.column("id").to_pylist()) == sorted(set(rows) - set(done))
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.parquet")} == cached

    # which files a re-run leaves out before any actor starts: those with every item done
    staged = file_rows(speech_dir).to_pylist()
    ids = [r["id"] for r in staged]
    assert dict(zip(ids, utterances.finished_files(str(cache), done, staged), strict=True)) == {
        "broken.mp4": False, "mute.mp4": False, "question.wav": False, "quiet.wav": True,
        "talk.mp4": False}  # talk.mp4: one of its two utterances is done
    whole_talk = np.array(sorted([r["id"] for r in talk] + ["quiet.wav"]), dtype=object)
    assert [f for f, yes in zip(ids, utterances.finished_files(str(cache), whole_talk, staged), strict=True)
            if yes] == ["quiet.wav", "talk.mp4"]
    assert utterances.finished_files(str(cache), None, staged) == [False] * 5

    # --segment: a file without speech becomes its windows; a transcript given is kept, not transcribed
    again.done, again.segment_s, again.keep_transcripts = None, 1.0, True
    given = file_rows(speech_dir).to_pylist()
    given[0]["transcript"] = "a transcript of my own"  # broken.mp4: not read at all
    out = {r["id"]: r for r in again(pa.Table.from_pylist(given, schema=STAGING_SCHEMA)).to_pylist()}
    assert out["broken.mp4"]["transcript"] == "a transcript of my own" and out["broken.mp4"]["error"] is None
    windows = [(out[k]["start"], out[k]["end"]) for k in sorted(out) if k.startswith("quiet.wav")]
    assert windows == [(0, 1), (1, 2), (2, 3)]
    assert [(out[k]["start"], out[k]["end"]) for k in sorted(out) if k.startswith("mute.mp4")] == [(0, 1), (1, 2)]
    assert all(out[k]["speech"] == "none" for k in out if k.startswith(("quiet", "mute")))


def test_cli_flags():
    cfg = label.parse_args(["in", "--checkpoint", "c", "--output", "o"])
    assert cfg.utterances == "auto" and cfg.asr.actors == (1, 1) and cfg.speech.model == "default"
    cfg = label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--utterances", "--asr-actors", "1,3",
                            "--asr-gpus-per-actor", "1", "--asr-model", "small.en", "--utterance-max", "8"])
    assert (cfg.utterances, cfg.asr.actors, cfg.asr.gpus_per_actor) == ("on", (1, 3), 1.0)
    assert (cfg.speech.model, cfg.speech.max_utterance_s) == ("small.en", 8.0)
    assert utterances.actor_speech_config(cfg.speech, cfg.asr).device == "cuda"  # a GPU actor runs Whisper on it
    assert label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--utterances", "off"]).utterances == "off"
    with pytest.raises(SystemExit):
        label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--utterances", "sometimes"])
    t = transcribe.parse_args(["in", "--output", "o", "--asr-cpus-per-actor", "2", "--asr-compute-type", "int8"])
    assert t.stage.cpus_per_actor == 2 and t.speech.compute_type == "int8"
    assert utterances.actor_speech_config(t.speech, t.stage).cpu_threads == 2  # threads = the CPUs Ray reserved


# ----------------------------------------------------------------------------- Ray


def test_speech_actors_fit_beside_the_model_and_a_task(ray_local, capsys):
    """On a cluster too small for speech actors + model actors + a 1-CPU task, the speech
    actors reserve less, so Ray Data never waits forever."""
    total = ray_local.cluster_resources()["CPU"]
    cfg = label.LabelConfig("in", "c", "o", cpus_per_actor=total - 1.5, decode_cpus=0.5,
                            asr=utterances.SpeechStageConfig(cpus_per_actor=0.5))
    assert label.fit_speech_actors(cfg) == cfg.asr and capsys.readouterr().err == ""  # model + 1 + 0.5: just fits
    cfg = label.LabelConfig("in", "c", "o", cpus_per_actor=total - 1.5)  # a 1-CPU speech actor does not
    assert label.fit_speech_actors(cfg).cpus_per_actor == 0.5
    assert "each speech actor reserves 0.5 CPUs" in capsys.readouterr().err
    gpu = label.LabelConfig("in", "c", "o", cpus_per_actor=4, asr=utterances.SpeechStageConfig(gpus_per_actor=1))
    assert label.fit_speech_actors(gpu) == gpu.asr  # GPU actors are placed by their GPUs



def test_starter_gives_no_label_where_there_is_no_speech(ray_local, tmp_path, speech_dir, capsys):
    """The README's `mmsa-ray label DIR` (the text-only starter): a file without speech has
    nothing the model reads, so its row carries no class, only the reason, and the summary
    counts it apart."""
    out = tmp_path / "labels"
    assert label.main([str(speech_dir), "--output", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "labeled 3, no signal 2, failed 1, skipped 0 (already in output) of 6 items" in text, text
    assert "no signal: 2 rows have no label (no speech: 2)" in text
    rows = read(out, label.LABEL_SCHEMA)
    for name in ("quiet.wav", "mute.mp4"):
        r = rows[name]
        assert (r["speech"], r["emotion"], r["sentiment"], r["emotion_probs"], r["no_label_reason"]) == \
            ("none", None, None, None, "no speech")
        assert r["modalities"] == [] and r["error"] is None
    labeled = [r for r in rows.values() if r["speech"] == "found"]
    assert len(labeled) == 3 and all(r["emotion"] in EMOTIONS and r["no_label_reason"] is None for r in labeled)


def test_label_utterances_parity_rerun_and_transcribe(ray_local, tmp_path, speech_dir, tiny_checkpoint, capsys):
    out = tmp_path / "labels"
    args = [str(speech_dir), "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--utterances", *FAST]
    assert label.main(args) == 0
    assert "labeled 5, failed 1, skipped 0 (already in output) of 6 items" in capsys.readouterr().out
    rows = read(out, label.LABEL_SCHEMA)
    check_utterances(rows)
    for r in rows.values():
        if r["error"] is None:
            assert r["emotion"] in EMOTIONS and r["sentiment"] in SENTIMENTS and len(r["emotion_probs"]) == 7
        # one espeak voice throughout: speaker S1 in each file, and one person across the archive
        assert (r["speaker"] == "S1") == (r["speech"] == "found") and (r["speaker_confidence"] is None) == (
            r["speech"] != "found")
    archive = pq.read_table(out / "_speakers.parquet").to_pylist()
    assert sorted((a["file_id"], a["speaker"]) for a in archive) == [("question.wav", "S1"), ("talk.mp4", "S1")]
    assert {a["speaker_id"] for a in archive} == {"spk1"}
    spoken = sorted((r for r in rows.values() if r["speech"] == "found"), key=lambda r: (r["uri"], r["start"]))
    assert spoken[-1]["modalities"] == ["text", "audio", "video"]  # talk.mp4's: all three
    assert rows["mute.mp4"]["modalities"] == ["video"] and rows["quiet.wav"]["modalities"] == ["audio"]

    # the same numbers as the one inference path, on the same window and transcript (+ context)
    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    turns = getattr(predictor.feature_config, "context_turns", 0)
    for r in spoken:
        earlier = [s["transcript"] for s in spoken if s["uri"] == r["uri"] and s["start"] < r["start"]]
        context = {"context": earlier[-turns:]} if turns and earlier else {}
        want = predictor.predict_batch(collate([predictor.preprocess(r["uri"], r["transcript"], r["start"], r["end"],
                                                                     **context)]))[0]
        np.testing.assert_allclose(r["emotion_probs"], want["emotion_probs"], atol=1e-5)
        np.testing.assert_allclose(r["sentiment_probs"], want["sentiment_probs"], atol=1e-5)
        assert (r["emotion"], r["modalities"], r["text_emotion"]) == (want["emotion"], want["modalities"],
                                                                      want["text_emotion"])

    # re-run: nothing labeled, nothing transcribed
    cached = cache_files(out)
    assert len(cached) == 5
    assert label.main(args) == 0
    assert "labeled 0, failed 0, skipped 6 (already in output) of 6 items" in capsys.readouterr().out
    assert read(out, label.LABEL_SCHEMA).keys() == rows.keys() and cache_files(out) == cached
    assert not list((out / label.FILES_DIR).glob("*.parquet"))  # every file finished: none staged for speech

    # transcribe: the same utterances, as a table of their own
    t_out = tmp_path / "transcripts"
    assert transcribe.main([str(speech_dir), "--output", str(t_out), "--rows-per-file", "2"]) == 0
    printed = capsys.readouterr().out
    assert "5 files: 3 utterances and 2 files without speech written, failed 1, skipped 0" in printed
    t_rows = read(t_out, utterances.UTTERANCE_SCHEMA)
    check_utterances(t_rows)
    assert t_rows.keys() == rows.keys()
    for k, r in t_rows.items():
        assert (r["transcript"], r["start"], r["end"], r["words"]) == (rows[k]["transcript"], rows[k]["start"],
                                                                       rows[k]["end"], rows[k]["words"])
        assert r["asr_model"].startswith("default@") and r["transcribed_at"] is not None
        assert r["file_id"] == k.split("#t=")[0]
    assert transcribe.main([str(speech_dir), "--output", str(t_out)]) == 0
    assert "0 utterances and 0 files without speech written, failed 0, skipped 6" in capsys.readouterr().out


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory, small_model_config) -> Path:
    """A random-initialised text-only model that reads two earlier utterances with each transcript."""
    import dataclasses

    import torch

    from mmsa_ray import checkpoint
    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.model import MultimodalSentimentModel

    torch.manual_seed(1)
    config = dataclasses.replace(small_model_config, modalities=("text",),
                                 features=FeatureConfig(context_turns=2, future_turns=1))
    path = tmp_path_factory.mktemp("checkpoint") / "text_ctx"
    checkpoint.save(MultimodalSentimentModel(config), str(path))
    return path


def test_auto_follows_the_checkpoint(ray_local, tmp_path, speech_dir, tiny_checkpoint, text_checkpoint, capsys):
    """--utterances auto (the default): a checkpoint that also uses audio and video labels one
    row per file and the summary points at --utterances; a text-only one transcribes, and
    each utterance is labeled with the file's earlier ones as context and its later one."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(speech_dir / "question.wav", src / "question.wav")
    shutil.copy(speech_dir / "talk.mp4", src / "talk.mp4")
    out = tmp_path / "labels"
    assert label.main([str(src), "--checkpoint", str(tiny_checkpoint), "--output", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "labeled 2, failed 0, skipped 0" in printed
    assert "note: the checkpoint uses text, but 2 of 2 items have no transcript: --utterances transcribes" in printed
    assert sorted(read(out, label.LABEL_SCHEMA)) == ["question.wav", "talk.mp4"]
    assert not (out / utterances.SPEECH_DIR).exists()

    out = tmp_path / "labels_text"
    assert label.main([str(src), "--checkpoint", str(text_checkpoint), "--output", str(out), *FAST]) == 0
    assert "labeled 3, failed 0, skipped 0 (already in output) of 3 items" in capsys.readouterr().out
    rows = sorted(read(out, label.LABEL_SCHEMA).values(), key=lambda r: (r["uri"], r["start"]))
    assert [r["modalities"] for r in rows] == [["text"]] * 3 and all(r["speech"] == "found" for r in rows)

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(text_checkpoint, device="cpu")
    assert predictor.uses_context
    second = rows[-1]  # talk.mp4's second sentence: the first is its context
    assert second["uri"].endswith("talk.mp4") and second["start"] > rows[-2]["start"]
    want = predictor.predict_batch(collate([predictor.preprocess(second["uri"], second["transcript"],
                                                                 context=[rows[-2]["transcript"]])]))[0]
    without = predictor.predict_batch(collate([predictor.preprocess(second["uri"], second["transcript"])]))[0]
    np.testing.assert_allclose(second["emotion_probs"], want["emotion_probs"], atol=1e-5)
    assert np.abs(np.subtract(want["emotion_probs"], without["emotion_probs"])).max() > 1e-4  # context counts
    first = rows[-2]  # ... and the second is the first's future
    want = predictor.predict_batch(collate([predictor.preprocess(first["uri"], first["transcript"],
                                                                 future=[second["transcript"]])]))[0]
    np.testing.assert_allclose(first["emotion_probs"], want["emotion_probs"], atol=1e-5)


def test_label_manifest_rows_get_their_files_earlier_rows_as_context(ray_local, tmp_path, speech_dir, text_checkpoint):
    """Without speech recognition, a manifest's transcribed rows of one file are labeled with
    the file's earlier rows (by time) as context and the later one as future: the same
    numbers as the Predictor given them; a row's own `future` cell is kept."""
    talk = str(speech_dir / "talk.mp4")
    lines = [("Great.", 2.0, 3.0), ("We lost the house.", 0.0, 1.0), ("Really?", 4.0, 5.0)]
    given = {"Really?": ["Now we can move to Paris!"]}
    pq.write_table(pa.Table.from_pylist([{"path": talk, "transcript": t, "start": a, "end": b, "future": given.get(t)}
                                         for t, a, b in lines]), tmp_path / "m.parquet")
    out = tmp_path / "labels"
    assert label.main([str(tmp_path / "m.parquet"), "--checkpoint", str(text_checkpoint), "--output", str(out),
                       "--utterances", "off", *FAST]) == 0
    rows = {r["transcript"]: r for r in read(out, label.LABEL_SCHEMA).values()}
    assert sorted(rows) == sorted(t for t, _, _ in lines)

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(text_checkpoint, device="cpu")
    contexts = {"We lost the house.": ([], ["Great."]), "Great.": (["We lost the house."], ["Really?"]),
                "Really?": (["We lost the house.", "Great."], given["Really?"])}
    for text, (context, future) in contexts.items():
        want = predictor.predict_batch(collate([predictor.preprocess(None, text, context=context, future=future)]))[0]
        np.testing.assert_allclose(rows[text]["emotion_probs"], want["emotion_probs"], atol=1e-5, err_msg=text)
    # an ambiguous line: only what follows it differs
    other = predictor.predict_batch(collate([predictor.preprocess(None, "Really?", context=contexts["Really?"][0],
                                                                  future=["The bank took everything."])]))[0]
    assert np.abs(np.subtract(rows["Really?"]["emotion_probs"], other["emotion_probs"])).max() > 1e-4
    alone = predictor.predict_batch(collate([predictor.preprocess(None, "Great.")]))[0]
    assert np.abs(np.subtract(rows["Great."]["emotion_probs"], alone["emotion_probs"])).max() > 1e-4


def test_kill_driver_during_speech_stage_then_rerun(ray_local, tmp_path, speech_dir, tiny_checkpoint):
    """kill -9 of the driver while files are being transcribed, then a re-run: every utterance
    in OUT exactly once, the files transcribed before the kill not transcribed again, and the
    archive's speakers complete (one voice: one speaker id)."""
    from test_label import spawn_label, wait_for

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        wave, _ = mediagen.spoken([["Good morning everyone.", "Thank you for coming."][i % 2], QUESTION[0]],
                                  rate=16000)
        mediagen.write_audio(src / f"s{i}.wav", rate=16000, channels=1, samples=wave[None])
    out, log = tmp_path / "labels", tmp_path / "run1.log"
    args = [str(src), "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--utterances",
            "--batch-size", "1", "--decode-batch-size", "1", "--rows-per-file", "1"]
    proc = spawn_label(ray_local.get_runtime_context().gcs_address, args, log)
    try:
        wait_for(lambda: cache_files(out), 240, "the first transcription", proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = cache_files(out)
    assert 1 <= len(before) < 6, "kill came too late to test resumption"
    time.sleep(3)  # Ray reaps the dead driver's workers (its job is over)

    assert label.main(args) == 0
    after = cache_files(out)
    assert len(after) == 6 and {k: after[k] for k in before} == before  # each file transcribed once
    rows = read(out, label.LABEL_SCHEMA)  # (no duplicate ids: read() checks)
    cached = pa.concat_tables([pq.read_table(p) for p in (out / utterances.SPEECH_DIR).rglob("*.parquet")
                               if not p.name.endswith(".speakers.parquet")])
    assert set(rows) == set(cached.column("id").to_pylist())  # nothing missing
    assert len(rows) >= 6 and all(r["speech"] == "found" and r["error"] is None for r in rows.values())
    assert sorted({r["uri"] for r in rows.values()}) == sorted(str(p) for p in src.iterdir())
    archive = pq.read_table(out / "_speakers.parquet").to_pylist()
    assert sorted(a["file_id"] for a in archive) == sorted(p.name for p in src.iterdir())  # each file once
    assert {a["speaker_id"] for a in archive} == {"spk1"} and all(r["speaker"] == "S1" for r in rows.values())
