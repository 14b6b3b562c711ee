"""label: Ray Data pipeline -> Parquet. One row per item, hostile files as error rows,
exactly once across re-runs and kill -9 (driver and decode worker), same numbers as the
Predictor, manifests with transcripts and windows."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import mediagen
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mmsa_ray import sources
from mmsa_ray.batch import attempts, decode, label, segments, staging
from mmsa_ray.labels import EMOTIONS, SENTIMENTS
from mmsa_ray.media import MediaError, decode_clip

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "4", "--decode-batch-size", "2", "--rows-per-file", "4"]


def read_out(out: Path) -> pa.Table:
    return pads.dataset(str(out), format="parquet", schema=label.LABEL_SCHEMA).to_table()


def by_id(table: pa.Table) -> dict[str, dict]:
    rows = table.to_pylist()
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory, sample_root) -> Path:
    """Assorted good media (mp4 A+V, video-only, wav, flac, sample clips) + hostile files."""
    d = tmp_path_factory.mktemp("media")
    mediagen.clips(d / "everyday")
    mediagen.write_audio(d / "everyday" / "tone.flac", 1.0, 22050, 2)
    mediagen.hostile_files(d / "hostile")
    (d / "notes.txt").write_text("not media: not listed")
    for clip in sorted((sample_root / "output_repeated_splits_test").glob("*.mp4"))[:4]:
        (d / "meld").mkdir(exist_ok=True)
        shutil.copy(clip, d / "meld" / clip.name)
    return d


def expected_ids(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.suffix in (".mp4", ".wav", ".flac")}


def spawn_label(ray_address: str, args: list[str], log: Path) -> subprocess.Popen:
    """`label.main(args)` in another driver process attached to the test's Ray."""
    code = ("import sys, ray; ray.init(address=sys.argv[1]); from mmsa_ray.batch import label; "
            "sys.exit(label.main(sys.argv[2:]))")
    return subprocess.Popen([sys.executable, "-c", code, ray_address, *args], cwd=REPO,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"labeling exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.002)
    pytest.fail(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- no Ray


def test_list_sources_directory_glob_and_manifests(tmp_path, media_dir):
    rows = list(sources.list_sources(str(media_dir)))
    assert {r["id"] for r in rows} == expected_ids(media_dir)
    assert all(Path(r["uri"]).is_absolute() and r["transcript"] is None and r["start"] is None for r in rows)
    globbed = list(sources.list_sources(str(media_dir / "everyday" / "*.mp4")))
    assert sorted(r["id"] for r in globbed) == ["av.mp4", "video_only.mp4"]

    (tmp_path / "clips").mkdir()
    rows = [
        {"path": "clips/a.mp4", "id": None, "transcript": "I am so happy!", "start": 0.5, "end": 1.5},
        {"path": "clips/b.mp4", "id": "b-id", "transcript": None, "start": None, "end": None},
        {"path": "/abs/c.wav", "id": None, "transcript": "x", "start": None, "end": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    with open(tmp_path / "m.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n")
    with open(tmp_path / "m.csv", "w") as f:
        f.write("path,id,transcript,start,end\n")
        for r in rows:
            cells = ("" if r[k] is None else f'"{r[k]}"' for k in ("path", "id", "transcript", "start", "end"))
            f.write(",".join(cells) + "\n")
    a_uri = str(tmp_path / "clips" / "a.mp4")
    for name in ("m.parquet", "m.jsonl", "m.csv"):
        got = list(sources.list_sources(str(tmp_path / name)))
        assert got == [
            {"id": f"{a_uri}#t=0.5,1.5", "uri": a_uri, "transcript": "I am so happy!", "start": 0.5, "end": 1.5,
             "context": None, "future": None},
            {"id": "b-id", "uri": str(tmp_path / "clips" / "b.mp4"), "transcript": None, "start": None, "end": None,
             "context": None, "future": None},
            {"id": "/abs/c.wav", "uri": "/abs/c.wav", "transcript": "x", "start": None, "end": None, "context": None,
             "future": None},
        ], name

    with open(tmp_path / "dup.csv", "w") as f:
        f.write("path,id\na.mp4,same\nb.mp4,same\n")
    with pytest.raises(ValueError, match="duplicate id 'same'"):
        list(sources.list_sources(str(tmp_path / "dup.csv")))
    with pytest.raises(FileNotFoundError, match="no media files"):
        list(sources.list_sources(str(tmp_path / "clips")))
    # a link whose target is gone is listed (its decode fails as a row), not silently dropped
    (tmp_path / "clips" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    assert [r["id"] for r in sources.list_sources(str(tmp_path / "clips"))] == ["gone.mp4"]
    with pytest.raises(MediaError, match="gone.mp4: broken symbolic link"):
        decode_clip(tmp_path / "clips" / "gone.mp4")


def test_manifest_context_given_or_from_the_files_earlier_rows(tmp_path):
    """A manifest's own `context` wins; otherwise each transcribed row of a file gets the
    transcripts of that file's earlier rows by start time (not by manifest order)."""
    rows = [
        {"path": "a.mp4", "transcript": "second", "start": 2.0, "end": 3.0},
        {"path": "a.mp4", "transcript": "first", "start": 0.0, "end": 1.0},
        {"path": "a.mp4", "transcript": "third", "start": 4.0, "end": 5.0, "context": ["told"]},
        {"path": "a.mp4", "transcript": "fourth", "start": 6.0, "end": 7.0},
        {"path": "a.mp4", "start": 8.0, "end": 9.0},
        {"path": "b.mp4", "transcript": "other file"},
    ]
    with open(tmp_path / "m.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    listed = list(sources.list_sources(str(tmp_path / "m.jsonl")))
    assert [r["context"] for r in listed] == [None, None, ["told"], None, None, None]
    got = [r["context"] for r in sources.with_file_context(listed, 2)]
    assert got == [["first"], [], ["told"], ["second", "third"], None, []]

    with open(tmp_path / "m.csv", "w") as f:
        f.write('path,transcript,context\na.mp4,Great.,"[""We won!""]"\nb.mp4,Fine.,\n')
    assert [r["context"] for r in sources.list_sources(str(tmp_path / "m.csv"))] == [["We won!"], None]
    with open(tmp_path / "bad.csv", "w") as f:
        f.write("path,transcript,context\na.mp4,Great.,We won!\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 1: `context` must be a list of strings"):
        list(sources.list_sources(str(tmp_path / "bad.csv")))


def test_decode_batch_timeout_attempt_records_and_watchdog(tmp_path, media_dir, tiny_checkpoint):
    ids = ["everyday/av.mp4", "everyday/audio_only.wav"]
    batch = pa.Table.from_pylist([
        {"id": ids[0], "uri": str(media_dir / ids[0]), "transcript": None, "start": None, "end": None},
        {"id": ids[1], "uri": str(media_dir / ids[1]), "transcript": "hello", "start": None, "end": None},
    ], schema=staging.STAGING_SCHEMA)
    records = tmp_path / "_attempts"
    records.mkdir()
    kw = {"checkpoint": str(tiny_checkpoint), "attempts_uri": str(records), "max_decode_attempts": 2}

    # a decoder that runs out of time: each row says so, nothing raises
    out = decode.decode_batch(batch, decode_timeout_s=1e-4, **kw)
    assert all("timed out after 0.0001 s" in e for e in out.column("error").to_pylist()), out
    assert not out.column("mask").chunk(0).to_numpy().any() and out.column("video").chunk(0).to_numpy().shape[0] == 2

    # a record left by a worker that died decoding av.mp4 twice: not decoded a third time
    record = records / (hashlib.sha1(ids[0].encode()).hexdigest() + ".json")
    job = attempts.current_job()
    record.write_text(json.dumps({"id": ids[0], "attempts": 2, "job": "an earlier job", "pid": 1}))
    out = decode.decode_batch(batch, decode_timeout_s=None, **kw)  # deaths of another job do not count
    assert out.column("error").to_pylist() == [None, None] and list(records.iterdir()) == []
    record.write_text(json.dumps({"id": ids[0], "attempts": 2, "job": job, "pid": 1}))
    out = decode.decode_batch(batch, decode_timeout_s=None, **kw)
    errors = out.column("error").to_pylist()
    assert errors[0] == (f"{media_dir / ids[0]}: the decoding worker died 2 times on this file (crash or kill); "
                         "not retried")
    assert errors[1] is None and out.column("mask").chunk(0).to_numpy()[1].tolist() == [1.0, 1.0, 0.0]  # text + audio
    assert record.exists()
    # one earlier death: decoded again, the record gone once decode returns, the retry noted for the summary
    record.write_text(json.dumps({"id": ids[0], "attempts": 1, "job": job, "pid": 1}))
    out = decode.decode_batch(batch, decode_timeout_s=None, **kw)
    assert out.column("error").to_pylist() == [None, None] and not record.exists()
    log = attempts.AttemptLog(pafs.LocalFileSystem(), str(records), job)
    assert [(r["id"], r["deaths"]) for r in log.retried()] == [(ids[0], 1)]
    assert attempts.AttemptLog(pafs.LocalFileSystem(), str(records), "another job").retried() == []

    # the watchdog behind DecodeConfig.timeout_s: a call that does not return is abandoned
    with pytest.raises(attempts.DecodeHung, match="still running after 0.2 s"):
        attempts.call_with_deadline(time.sleep, 0.2, 5)
    assert attempts.call_with_deadline(lambda x: x + 1, 1.0, 1) == 2
    assert attempts.watchdog_s(30.0) == 70.0  # twice the decoder's own limit, plus 10 s


def test_cli_help_covers_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        label.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--output", "--actors", "--gpus-per-actor", "--batch-size", "--decode-timeout",
                 "--max-decode-attempts", "--rows-per-file", "--segment"):
        assert flag in text
    cfg = label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--actors", "2,4", "--gpus-per-actor", "1"])
    assert cfg.actors == (2, 4) and cfg.gpus_per_actor == 1.0 and cfg.batch_size == 16


def test_segment_windows_and_flag():
    assert segments.segment_windows(25.0, 10) == [(0, 10), (10, 20), (20, 25.0)]
    assert segments.segment_windows(24.0, 10) == [(0, 10), (10, 24.0)]  # 4 s < 5 s: joins the last window
    assert segments.segment_windows(3.0, 10) == [(0, 3.0)]
    assert segments.segment_windows(15.0, 10) == [(0, 10), (10, 15.0)]
    assert label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--segment", "30"]).segment_s == 30.0
    with pytest.raises(SystemExit):
        label.parse_args(["in", "--checkpoint", "c", "--output", "o", "--segment", "0"])


# ----------------------------------------------------------------------------- Ray


def test_folder_hostile_rows_rerun_and_predictor_parity(ray_local, tmp_path, media_dir, tiny_checkpoint, capsys):
    out = tmp_path / "labels"
    args = [str(media_dir), "--checkpoint", str(tiny_checkpoint), "--output", str(out), *FAST]
    assert label.main(args) == 0
    n = len(expected_ids(media_dir))
    printed = capsys.readouterr().out
    assert f"labeled {n - 8}, failed 8, skipped 0" in printed

    table = read_out(out)
    assert table.schema == label.LABEL_SCHEMA and table.num_rows == n
    rows = by_id(table)
    assert set(rows) == expected_ids(media_dir)
    hostile = {k: v for k, v in rows.items() if k.startswith("hostile/")}
    assert len(hostile) == 8
    for id_, r in hostile.items():
        assert r["error"].startswith(str(media_dir / id_) + ": ") and len(r["error"]) > len(str(media_dir / id_)) + 10
        assert r["emotion"] is None and r["emotion_probs"] is None and r["model_id"]
    assert "empty file" in rows["hostile/empty.mp4"]["error"]
    good = [r for k, r in rows.items() if not k.startswith("hostile/")]
    for r in good:
        assert r["error"] is None, r
        assert r["emotion"] in EMOTIONS and r["sentiment"] in SENTIMENTS
        assert len(r["emotion_probs"]) == 7 and abs(sum(r["emotion_probs"]) - 1) < 1e-4
        assert len(r["sentiment_probs"]) == 3 and r["transcript"] is None and r["start"] is None
    assert rows["everyday/av.mp4"]["modalities"] == ["audio", "video"]
    assert rows["everyday/video_only.mp4"]["modalities"] == ["video"]
    assert rows["everyday/video_only.mp4"]["audio_emotion"] is None
    assert rows["everyday/audio_only.wav"]["modalities"] == ["audio"]
    # nothing half-written or staged is visible as output
    visible = [p.name for p in out.iterdir() if p.is_file()]
    assert visible and all(v.endswith(".parquet") and not v.startswith(".") for v in visible)

    # the same numbers as the one inference path, clip by clip
    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    for id_ in ("everyday/av.mp4", "everyday/audio_only.wav", sorted(k for k in rows if k.startswith("meld/"))[0]):
        want = predictor.predict_batch(collate([predictor.preprocess(str(media_dir / id_))]))[0]
        got = rows[id_]
        np.testing.assert_allclose(got["emotion_probs"], want["emotion_probs"], atol=1e-5)
        np.testing.assert_allclose(got["sentiment_probs"], want["sentiment_probs"], atol=1e-5)
        keys = ("emotion", "model_id", "modalities")
        assert [got[k] for k in keys] == [want[k] for k in keys]

    # re-run: everything is already there
    assert label.main(args) == 0
    printed = capsys.readouterr().out
    assert f"labeled 0, failed 0, skipped {n}" in printed and "another model" not in printed
    assert read_out(out).num_rows == n
    # ... and with another checkpoint, the rows of the first model stay, and the summary says so
    other = tmp_path / "other_model"
    shutil.copytree(tiny_checkpoint, other)
    assert label.main([*args[:args.index("--checkpoint")], "--checkpoint", str(other),
                       *args[args.index("--checkpoint") + 2:]]) == 0
    assert f"note: {n} rows in {out} come from another model" in capsys.readouterr().out


def test_manifest_transcripts_and_windows(ray_local, tmp_path, media_dir, tiny_checkpoint):
    av = media_dir / "everyday" / "av.mp4"
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,id,transcript,start,end\n"
        f"{av},whole,\"Oh my God, I can't believe it!\",,\n"
        f"{av},,I'm fine.,0.5,1.5\n"
        f"{media_dir / 'hostile' / 'random.mp4'},bad,hello,,\n"
        f"{tmp_path / 'missing.mp4'},gone,,,\n"
    )
    out = tmp_path / "labels"
    assert label.main([str(manifest), "--checkpoint", str(tiny_checkpoint), "--output", str(out), *FAST]) == 0
    rows = by_id(read_out(out))
    window_id = f"{av}#t=0.5,1.5"
    assert set(rows) == {"whole", window_id, "bad", "gone"}
    assert rows["whole"]["transcript"] == "Oh my God, I can't believe it!"
    assert rows["whole"]["modalities"] == ["text", "audio", "video"]
    assert (rows[window_id]["start"], rows[window_id]["end"], rows[window_id]["transcript"]) == (0.5, 1.5, "I'm fine.")
    assert rows["bad"]["error"] and rows["bad"]["transcript"] == "hello"
    assert "missing.mp4" in rows["gone"]["error"]

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    want = predictor.predict_batch(collate([predictor.preprocess(str(av), "I'm fine.", 0.5, 1.5)]))[0]
    np.testing.assert_allclose(rows[window_id]["emotion_probs"], want["emotion_probs"], atol=1e-5)
    assert rows[window_id]["text_emotion"] == want["text_emotion"]


def test_segment_long_recordings(ray_local, tmp_path, media_dir, tiny_checkpoint, capsys):
    """--segment 10: a 25 s recording becomes three windowed rows, a 3 s one a single window,
    a broken file one error row; a re-run skips them all."""
    from mmsa_ray.media import probe_duration

    src = tmp_path / "in"
    src.mkdir()
    long = mediagen.write_video(src / "long.mkv", 25.0, 64, 48, 10, audio=(16000, 1, "pcm_s16le"))
    mediagen.write_audio(src / "short.wav", 3.0, 16000, 1)
    shutil.copy(media_dir / "hostile" / "random.mp4", src / "broken.mp4")
    out = tmp_path / "labels"
    args = [str(src), "--checkpoint", str(tiny_checkpoint), "--output", str(out), "--segment", "10", *FAST]
    assert label.main(args) == 0
    assert "labeled 4, failed 1, skipped 0 (already in output) of 5 items" in capsys.readouterr().out
    rows = by_id(read_out(out))
    d = probe_duration(long)
    assert d == pytest.approx(25.0, abs=0.01)
    windows = {f"long.mkv#t={a:g},{b:g}": (a, b) for a, b in [(0, 10), (10, 20), (20, d)]}
    assert set(rows) == {*windows, "short.wav#t=0,3", "broken.mp4"}
    for id_, (a, b) in windows.items():
        r = rows[id_]
        assert (r["start"], r["end"], r["error"], r["modalities"]) == (a, b, None, ["audio", "video"])
    assert rows["broken.mp4"]["error"] and rows["broken.mp4"]["start"] is None

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    want = predictor.predict_batch(collate([predictor.preprocess(str(long), None, 10, 20)]))[0]
    np.testing.assert_allclose(rows["long.mkv#t=10,20"]["emotion_probs"], want["emotion_probs"], atol=1e-5)

    assert label.main(args) == 0
    assert "labeled 0, failed 0, skipped 5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="max_duration_s"):
        label.label(label.LabelConfig(str(src), str(tiny_checkpoint), str(out), segment_s=1000))


def test_kill_driver_midway_then_rerun_exactly_once(ray_local, tmp_path, media_dir, tiny_checkpoint):
    src = tmp_path / "in"
    for name in ("everyday/av.mp4", "everyday/video_only.mp4", "everyday/audio_only.wav", "everyday/tone.flac",
                 "hostile/empty.mp4", "hostile/random.mp4"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(media_dir / name, src / name)
    out, log = tmp_path / "labels", tmp_path / "run1.log"
    args = [str(src), "--checkpoint", str(tiny_checkpoint), "--output", str(out),
            "--batch-size", "1", "--decode-batch-size", "1", "--rows-per-file", "1"]
    proc = spawn_label(ray_local.get_runtime_context().gcs_address, args, log)
    try:
        wait_for(lambda: out.is_dir() and any(p.suffix == ".parquet" and p.name[0] not in "._" for p in out.iterdir()),
                 180, "the first output file", proc, log)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(3)  # Ray reaps the dead driver's workers (its job is over)
    n = len(expected_ids(src))
    first = read_out(out).num_rows
    assert 1 <= first < n, "kill came too late to test resumption"

    # Resume on a cluster that the model actor and one decode task fill completely, as the
    # defaults fill a 2-CPU machine: restoring must not take a CPU of its own (Ray's
    # restore filter did, and every re-run deadlocked there).
    log = tmp_path / "run2.log"
    proc = spawn_label(ray_local.get_runtime_context().gcs_address, [*args, "--cpus-per-actor", "3"], log)
    try:
        assert proc.wait(240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"skipped {first} (already in output) of {n} items" in log.read_text()
    table = read_out(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == n and set(ids) == expected_ids(src)
    assert sum(e is not None for e in table.column("error").to_pylist()) == 2


def test_worker_killed_while_decoding_is_retried_then_recorded(ray_local, tmp_path, media_dir, tiny_checkpoint):
    """A decode worker dies (kill -9) while decoding long.wav: Ray retries the task, the
    other items of the block are labeled, and with --max-decode-attempts 1 long.wav
    becomes an error row instead of being decoded again."""
    src = tmp_path / "in"
    src.mkdir()
    with wave.open(str(src / "long.wav"), "wb") as w:  # 300 s: about a second to decode
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(48000)
        chunk = np.random.default_rng(0).integers(-3000, 3000, (48000 * 10, 2)).astype("<i2").tobytes()
        for _ in range(30):
            w.writeframes(chunk)
    shutil.copy(media_dir / "everyday" / "av.mp4", src / "a.mp4")
    shutil.copy(media_dir / "everyday" / "video_only.mp4", src / "b.mp4")
    out = tmp_path / "labels"
    record = out / attempts.ATTEMPTS_DIR / (hashlib.sha1(b"long.wav").hexdigest() + ".json")
    config = label.parse_args([str(src), "--checkpoint", str(tiny_checkpoint), "--output", str(out),
                               "--decode-batch-size", "3", "--max-decode-attempts", "1"])
    result: dict = {}

    def run():
        try:
            result["summary"] = label.label(config)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def worker_pid():
        if not thread.is_alive():
            pytest.fail(f"labeling ended before long.wav's decode was seen: {result}")
        try:
            return json.loads(record.read_text())["pid"]
        except (FileNotFoundError, ValueError):
            return None

    pid = wait_for(worker_pid, 180, "long.wav's decode to start")
    assert pid != os.getpid()  # decoding runs in a Ray worker, not in the driver
    os.kill(pid, signal.SIGKILL)
    thread.join(180)
    assert "summary" in result, result
    rows = by_id(read_out(out))
    assert set(rows) == {"long.wav", "a.mp4", "b.mp4"}
    assert "the decoding worker died 1 times" in rows["long.wav"]["error"]
    assert rows["a.mp4"]["error"] is None and rows["b.mp4"]["error"] is None
    s = result["summary"]
    assert (s.labeled, s.failed, s.skipped, s.total_rows) == (2, 1, 0, 3)
