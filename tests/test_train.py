"""Featurize + Ray Train on the synthetic sample data (small model: 8 frames of 64x64), real Ray.

The sample data is featurized once per module (all modalities); every training run reuses
that cache. Acceptance: 2 CPU workers (gloo DDP) reach >= 90% dev accuracy on both heads
with all modalities and with each modality alone; a worker SIGKILLed after the first
checkpoint is recovered from it; cached and end-to-end (frozen encoders) training agree;
the checkpoint loads in a fresh offline process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmsa_ray import checkpoint
from mmsa_ray.labels import MODALITIES
from mmsa_ray.train import driver as train
from mmsa_ray.train import featurize, model_args
from mmsa_ray.train.meld import ClipRecord, read_meld

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def features(ray_local, sample_root, small_model_config, cache_dir):
    """train + dev of the sample data featurized with all modalities (what train's cached mode reuses)."""
    model = model_args.build_model(small_model_config, init_seed=0)
    out = {}
    for split in ("train", "dev"):
        out[split] = featurize.featurize_records(read_meld(sample_root, split).records, model, split,
                                                 cache_dir=str(cache_dir), batch_size=16)
    return out


def _run(tmp_path, sample_root, config, cache_dir, name, *, epochs=8, workers=2, modalities=MODALITIES, **kw):
    job = train.JobConfig(meld_dir=str(sample_root), output=str(tmp_path / name / "model"),
                          storage_path=str(tmp_path / "store"), name=name, num_workers=workers,
                          cache_dir=str(cache_dir), max_failures=kw.pop("max_failures", 1))
    cfg = train.TrainConfig(modalities=modalities, epochs=epochs, batch_size=8, lr=3e-3, encoder_lr=3e-3, patience=0,
                            seed=0, label_smoothing=0.05, **kw)
    return train.run(job, cfg, config)


def test_featurize_sample(features, sample_root, small_model_config, cache_dir):
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    tr = features["train"]
    assert tr.rows == 84 and tr.errors == [] and features["dev"].rows == 42
    t = pads.dataset(tr.path, format="parquet").to_table()
    row = t.slice(0, 1).to_pylist()[0]
    assert len(row["video_emb"]) == 512 and len(row["text_emb"]) == 384 and len(row["audio"]) == 64 * 300
    assert row["mask"] == [1.0, 1.0, 1.0] and row["error"] is None
    assert str(t.schema.field("audio").type) == "list<element: halffloat>"
    # in record order (a deterministic cache: cached and end-to-end training see the same batches)
    assert t.column("id").to_pylist() == [r.id for r in read_meld(sample_root, "train").records]
    assert t.num_rows == tr.rows
    assert pq.ParquetFile(next(Path(tr.path).glob("*.parquet"))).metadata.row_group(0).num_rows == 64
    assert np.abs(np.asarray(row["video_emb"])).sum() > 0 and np.abs(np.asarray(row["text_emb"])).sum() > 0
    # a second run is a cache hit (no Ray work), and so is a subset of the modalities
    model = model_args.build_model(small_model_config, init_seed=0)
    train_records = read_meld(sample_root, "train").records
    again = featurize.featurize_records(train_records, model, "train", cache_dir=str(cache_dir))
    assert again.reused and again.path == tr.path
    sub = featurize.featurize_records(train_records, model, "train", modalities=("audio",), cache_dir=str(cache_dir))
    assert sub.reused and sub.path == tr.path


def test_featurize_error_rows_and_text_only(ray_local, sample_root, small_model_config, tmp_path):
    good = read_meld(sample_root, "dev").records[0]
    bad_file = tmp_path / "dia9_utt9.mp4"
    bad_file.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    bad = ClipRecord(**{**good.__dict__, "id": "dev/dia9_utt9", "path": str(bad_file), "utterance_id": 9})
    none = ClipRecord(**{**good.__dict__, "id": "dev/dia9_utt8", "path": None, "utterance_id": 8})
    model = model_args.build_model(small_model_config, init_seed=0)
    res = featurize.featurize_records([good, bad, none], model, "dev", cache_dir=str(tmp_path / "c"), batch_size=4)
    assert res.rows == 3 and [e["id"] for e in res.errors] == ["dev/dia9_utt9"]
    assert str(bad_file) in res.errors[0]["error"] and "1 failed" in res.summary()
    import pyarrow.dataset as pads

    rows = {r["id"]: r for r in pads.dataset(res.path, format="parquet").to_table().to_pylist()}
    assert rows["dev/dia9_utt9"]["mask"] == [0.0, 0.0, 0.0]
    assert rows["dev/dia9_utt8"]["mask"] == [1.0, 0.0, 0.0] and rows["dev/dia9_utt8"]["audio"] == []
    assert rows[good.id]["mask"] == [1.0, 1.0, 1.0]
    # text only never opens a media file: the corrupt clip is fine
    text = featurize.featurize_records([good, bad, none], model, "dev", modalities=("text",),
                                       cache_dir=str(tmp_path / "c"), reuse_superset=False)
    assert text.errors == [] and text.key != res.key


def _dev_acc(res):
    return {h: res["report"]["heads"][h]["accuracy"] for h in ("emotion", "sentiment")}


def test_ddp_training_survives_a_killed_worker(features, sample_root, small_model_config, cache_dir, tmp_path):
    """2 gloo workers, all modalities; rank 1 is SIGKILLed once epoch 1's checkpoint exists."""
    pid_dir = tmp_path / "pids"
    run_dir = tmp_path / "store" / "ddp"
    killed = {}

    def killer():
        deadline = time.time() + 400
        while time.time() < deadline and not killed:
            if (run_dir / "epoch_001").is_dir() and (pid_dir / "rank1.pid").is_file():
                pid = int((pid_dir / "rank1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = _run(tmp_path, sample_root, small_model_config, cache_dir, "ddp", epochs=8, pid_dir=str(pid_dir),
               modality_dropout=0.2)
    t.join(timeout=5)
    assert killed, "the killer never found epoch_001 and rank 1's pid"
    assert int((pid_dir / "rank1.pid").read_text()) != killed["pid"], "rank 1 was not restarted"
    state = json.loads((Path(res["result"].checkpoint.path) / "train_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == list(range(1, 9))  # resumed, not restarted: each epoch once
    assert res["result"].metrics["epoch"] == 8 and res["result"].error is None
    acc = _dev_acc(res)
    assert acc["emotion"] >= 0.9 and acc["sentiment"] >= 0.9, acc
    out = Path(res["output"])
    assert (out / "model.safetensors").is_file() and (Path(res["report_dir"]) / "report.md").is_file()
    assert (Path(res["report_dir"]) / "confusion_emotion.png").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    # the checkpoint loads in a fresh, offline process and predicts the same as here
    code = ("import sys, torch; sys.path.insert(0, sys.argv[2]); from mmsa_ray import checkpoint;"
            "m = checkpoint.load(sys.argv[1]);"
            "print(sum(float(p.double().sum()) for p in m.parameters() if p.requires_grad))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(REPO)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    here = checkpoint.load(out)
    here_sum = sum(float(p.double().sum()) for p in here.parameters() if p.requires_grad)
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(here_sum)


@pytest.mark.parametrize("modality", MODALITIES)
def test_each_modality_alone(features, sample_root, small_model_config, cache_dir, tmp_path, modality):
    # video alone: 8 epochs gave emotion 1.0 but sentiment 0.74 (the randomly initialised trunk); it needs
    # longer, and even at 14 epochs its sentiment varied between runs (0.79 once) with Ray Data's row order.
    # With the order fixed (deterministic) the run is reproducible: sentiment 0.93 every time.
    video = modality == "video"
    res = _run(tmp_path, sample_root, small_model_config, cache_dir, f"only_{modality}", epochs=14 if video else 8,
               modalities=(modality,), deterministic=video)
    acc = _dev_acc(res)
    assert acc["emotion"] >= 0.9 and acc["sentiment"] >= 0.9, (modality, acc)
    assert res["report"]["modalities"] == modality


def test_cached_and_end_to_end_agree(features, sample_root, small_model_config, cache_dir, tmp_path):
    """Frozen encoders: streaming raw clips through decode+features+trunks each epoch trains the
    same model as the cached features (one worker, same seed, same row order). Two epochs: the
    second re-streams every clip (each end-to-end epoch takes about a minute here)."""
    kw = dict(epochs=2, workers=1, shuffle_buffer=0, deterministic=True)
    cached = _run(tmp_path, sample_root, small_model_config, cache_dir, "cached", **kw)
    e2e = _run(tmp_path, sample_root, small_model_config, cache_dir, "e2e", end_to_end=True, **kw)
    assert e2e["info"]["mode"] == "end-to-end" and cached["info"]["mode"] == "cached"
    for h in ("emotion", "sentiment"):
        a, b = cached["best_metrics"], e2e["best_metrics"]
        assert abs(a[f"dev_{h}_accuracy"] - b[f"dev_{h}_accuracy"]) <= 0.03, (h, a, b)
        assert abs(a[f"dev_{h}_weighted_f1"] - b[f"dev_{h}_weighted_f1"]) <= 0.03, (h, a, b)
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.05 * abs(a["train_loss"])


# $MELD_DIR, else ../shared/meld beside the repository (the CSVs are never copied into it).
MELD = os.environ.get("MELD_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "meld")


@pytest.mark.skipif(not Path(MELD, "train_sent_emo.csv").is_file(),
                    reason="real MELD CSVs not found in $MELD_DIR or ../shared/meld")
def test_text_only_on_real_meld_csvs(ray_local, tmp_path):
    """The MELD CSVs alone (no clips): text-only training through the CLI entry point."""
    rc = train.main(["--meld-dir", MELD, "--modalities", "text", "--limit", "200", "--epochs", "2",
                     "--num-workers", "2",
                     "--storage-path", str(tmp_path / "store"), "--name", "meld", "--output", str(tmp_path / "ckpt")])
    assert rc == 0
    report = json.loads((tmp_path / "ckpt_report" / "report.json").read_text())
    assert report["n"] == 200 and report["modalities"] == "text" and report["errors"] == []
    assert 0.0 <= report["heads"]["emotion"]["weighted_f1"] <= 1.0


def test_output_must_not_replace_other_files(tmp_path, capsys):
    """--output naming a folder of other files fails at once, before Ray or any training."""
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        train.main(["--meld-dir", str(tmp_path), "--output", str(precious)])
    assert exc.value.code == 2
    assert "not an mmsa_ray checkpoint" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        train.main(["--meld-dir", str(tmp_path), "--num-workers", "0"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train.main(["--meld-dir", str(tmp_path), "--speaker-dropout", "1.5"])
    assert "--speaker-dropout is a share of rows, from 0 to 1; got 1.5" in capsys.readouterr().err
