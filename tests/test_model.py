"""model.py: shapes, masks, frozen backbones, cached embeddings, late fusion, config and
checkpoints (round trip in a fresh offline process, atomic writes, load errors).

Small inputs throughout: 8 frames of 64x64 (conftest's small_model_config)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsa_ray import checkpoint, labels
from mmsa_ray.checkpoint import CONFIG_FILE, TEXT_ENCODER_DIR, WEIGHTS_FILE
from mmsa_ray.model import ModelConfig, MultimodalSentimentModel, build_video_trunk

REPO = Path(__file__).resolve().parents[1]
B = 4


@pytest.fixture(scope="module")
def model(small_model_config) -> MultimodalSentimentModel:
    torch.manual_seed(0)
    return MultimodalSentimentModel(small_model_config).eval()


@pytest.fixture(scope="module")
def late_model(small_model_config) -> MultimodalSentimentModel:
    torch.manual_seed(0)
    return MultimodalSentimentModel(dataclasses.replace(small_model_config, fusion="late")).eval()


def _batch(config: ModelConfig, seed: int = 0, b: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = config.decode
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.float32)[:b]
    attention = torch.zeros(b, 128, dtype=torch.int64)
    attention[:, :12] = 1
    ids = torch.randint(1000, 2000, (b, 128), generator=g) * attention
    return {
        "video": torch.randn(b, 3, d.num_frames, d.height, d.width, generator=g),
        "audio": torch.randn(b, 1, 64, 300, generator=g),
        "input_ids": ids,
        "attention_mask": attention,
        "mask": mask,
    }


def _assert_outputs_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    for key in ("emotion", "sentiment"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)
    for m in labels.MODALITIES:
        for key in ("emotion", "sentiment"):
            torch.testing.assert_close(a["per_modality"][m][key], b["per_modality"][m][key], rtol=0, atol=atol)


# ----------------------------------------------------------------------------- config


def test_config_json_round_trip_and_validation(small_model_config):
    from mmsa_ray.media import DecodeConfig

    data = json.loads(json.dumps(small_model_config.to_dict()))
    assert data["decode"]["num_frames"] == 8 and data["features"]["n_mels"] == 64
    back = ModelConfig.from_dict(data)
    assert back == small_model_config and isinstance(back.decode, DecodeConfig)
    with pytest.raises(ValueError, match="unknown ModelConfig key"):
        ModelConfig.from_dict({**data, "fusion_layers": 2})
    with pytest.raises(ValueError, match="unknown ModelConfig.decode key"):
        ModelConfig.from_dict({**data, "decode": {**data["decode"], "fps": 3}})
    with pytest.raises(ValueError, match="fusion"):
        ModelConfig(fusion="attention")
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    with pytest.raises(ValueError, match="sample_rate"):
        ModelConfig(decode=DecodeConfig(sample_rate=22050))


# ----------------------------------------------------------------------------- forward


def test_forward_shapes_and_backward(model):
    m = copy.deepcopy(model).train()
    out = m(_batch(m.config))
    assert out["emotion"].shape == (B, 7) and out["sentiment"].shape == (B, 3)
    for mod in labels.MODALITIES:
        assert out["per_modality"][mod]["emotion"].shape == (B, 7)
        assert out["per_modality"][mod]["sentiment"].shape == (B, 3)
    loss = out["emotion"].logsumexp(-1).sum() + out["sentiment"].logsumexp(-1).sum()
    loss = loss + sum(out["per_modality"][mod][k].sum() for mod in labels.MODALITIES for k in ("emotion", "sentiment"))
    loss.backward()
    for name, p in m.named_parameters():
        if name.startswith(("video_backbone.", "text_encoder.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.text_proj.weight.grad.abs().sum() > 0 and m.video_proj[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["concat", "late"])
def test_absent_modalities_cannot_change_the_output(model, late_model, fusion):
    """A sample's outputs depend only on its present modalities: garbage (huge values,
    NaN, out-of-vocabulary ids) in the absent ones changes nothing, for that sample or
    for the others in the batch, in eval and in train mode."""
    m = copy.deepcopy(model if fusion == "concat" else late_model)
    clean = _batch(m.config)
    # zero what is absent: the reference
    for i, row in enumerate(clean["mask"]):
        if not row[0]:
            clean["input_ids"][i] = 0
            clean["attention_mask"][i] = 0
        if not row[1]:
            clean["audio"][i] = 0
        if not row[2]:
            clean["video"][i] = 0
    dirty = {k: v.clone() for k, v in clean.items()}
    for i, row in enumerate(clean["mask"]):
        if not row[0]:
            dirty["input_ids"][i] = 10**7  # beyond the vocabulary
            dirty["attention_mask"][i] = 1
        if not row[1]:
            dirty["audio"][i] = float("nan")
        if not row[2]:
            dirty["video"][i] = 1e6
            dirty["video"][i, 0, 0, 0, 0] = float("inf")
    for train in (False, True) if fusion == "concat" else (False,):
        m.train(train)
        torch.manual_seed(1)
        a = m(clean)
        torch.manual_seed(1)
        b = m(dirty)
        _assert_outputs_equal(a, b)
        assert all(torch.isfinite(a[k]).all() for k in ("emotion", "sentiment"))
    # and a text-only sample gives what it gives alone
    m.eval()
    with torch.no_grad():
        full, alone = m(dirty), m({k: v[1:2] for k, v in dirty.items()})
    for key in ("emotion", "sentiment"):
        torch.testing.assert_close(full[key][1:2], alone[key], rtol=0, atol=1e-5)


def test_late_fusion_is_the_mask_weighted_average_of_modality_logits(late_model):
    m = late_model
    assert m.fusion is None and not any(k.startswith(("fusion.", "emotion_head.")) for k in m.state_dict())
    batch = _batch(m.config)
    with torch.no_grad():
        out = m(batch)
    mask = batch["mask"]
    for key in ("emotion", "sentiment"):
        stacked = torch.stack([out["per_modality"][mod][key] for mod in labels.MODALITIES], dim=1)  # B, 3, C
        want = (stacked * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(out[key], want)
    # a sample with one modality: fused == that modality's own logits
    torch.testing.assert_close(out["emotion"][3], out["per_modality"]["video"]["emotion"][3])


@pytest.mark.parametrize("fusion", ["concat", "late"])
def test_every_trainable_parameter_gets_a_gradient(model, late_model, fusion):
    """DDP needs every trainable parameter in the graph of a loss over all outputs,
    and a training batch of one sample must work (last batch of a shard)."""
    m = copy.deepcopy(model if fusion == "concat" else late_model).train()
    for b in (B, 1):
        m.zero_grad()
        batch = _batch(m.config, b=b)
        cached = m.backbone_features(batch)  # the frozen trunks get no gradient anyway
        out = m({"audio": batch["audio"], "mask": batch["mask"], **cached})
        loss = out["emotion"].sum() + out["sentiment"].sum()
        loss = loss + sum(
            out["per_modality"][mod][k].sum() for mod in labels.MODALITIES for k in ("emotion", "sentiment")
        )
        loss.backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing


def test_cached_embeddings_give_the_raw_forward(model):
    batch = _batch(model.config)
    with torch.no_grad():
        raw = model(batch)
        cached = model.backbone_features(batch)
    assert cached["video_emb"].shape == (B, 512) and cached["video_emb"].dtype == torch.float32
    assert cached["text_emb"].shape == (B, model.text_hidden) and cached["text_emb"].dtype == torch.float32
    assert not cached["text_emb"][2:].any() and not cached["video_emb"][1].any()  # absent rows are 0
    small = {"audio": batch["audio"], "mask": batch["mask"], **cached}
    with torch.no_grad():
        out = model(small)
        half = model({**small, "audio": batch["audio"].half(), "video_emb": cached["video_emb"].half()})
    _assert_outputs_equal(raw, out, atol=1e-5)
    torch.testing.assert_close(half["emotion"], raw["emotion"], rtol=0, atol=5e-3)  # float16 caches are accepted
    with pytest.raises(KeyError, match="video_emb"):
        model({"audio": batch["audio"], "mask": batch["mask"], "text_emb": cached["text_emb"]})


def test_frozen_backbones_stay_frozen_through_training(model):
    m = copy.deepcopy(model)
    m.train()
    assert m.training and m.fusion.training and m.audio_encoder.training
    assert not m.video_backbone.training and not m.text_encoder.training
    assert all(not mod.training for mod in m.video_backbone.modules())
    frozen_before = {
        k: v.clone() for k, v in m.state_dict().items() if k.startswith(("video_backbone.", "text_encoder."))
    }
    trainable_before = {k: v.detach().clone() for k, v in m.named_parameters() if v.requires_grad}
    assert any("running_mean" in k for k in frozen_before)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    target = torch.tensor([0, 3, 4, 6])
    for seed in range(2):
        out = m(_batch(m.config, seed=seed))
        loss = torch.nn.functional.cross_entropy(out["emotion"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    for k, v in frozen_before.items():  # weights and BN running stats alike
        assert torch.equal(after[k], v), k
    changed = [k for k, v in m.named_parameters() if v.requires_grad and not torch.equal(v, trainable_before[k])]
    assert "fusion.0.weight" in changed and "audio_encoder.conv.0.weight" in changed
    assert m.audio_encoder.conv[1].num_batches_tracked.item() == 2  # trainable BN did update


def test_param_groups_cover_trainable_parameters_once(model):
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["encoders", "heads"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.trainable_parameters()}
    n = sum(p.numel() for p in model.trainable_parameters())
    assert 100_000 < n < 1_000_000  # heads and projections only; the 45 M backbone parameters are frozen


def test_video_weights_from_local_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    trunk = build_video_trunk("none")
    state = {k: v.clone().contiguous() for k, v in trunk.state_dict().items()}
    save_file(state, str(tmp_path / "r3d.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "r3d.pth")
    for name in ("r3d.safetensors", "r3d.pth"):
        loaded = build_video_trunk(str(tmp_path / name))
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_video_trunk(str(tmp_path / "missing.pth"))
    save_file({"conv.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an r3d_18 state dict"):
        build_video_trunk(str(tmp_path / "other.safetensors"))


def test_kinetics_weights_offline_error_is_clear(monkeypatch, tmp_path):
    import urllib.error

    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="Kinetics-400 weights.*Offline"):
        build_video_trunk("kinetics")


# ----------------------------------------------------------------------------- checkpoints


_ROUND_TRIP = r"""
import sys, numpy as np, torch
from mmsa_ray import checkpoint
model = checkpoint.load(sys.argv[1])
batch = {k: torch.from_numpy(v) for k, v in np.load(sys.argv[2]).items()}
with torch.no_grad():
    out = model(batch)
np.savez(sys.argv[3], emotion=out["emotion"].numpy(), sentiment=out["sentiment"].numpy(),
         video=out["per_modality"]["video"]["emotion"].numpy(), training=np.array(model.training))
"""


def test_checkpoint_round_trip_in_a_fresh_offline_process(tiny_checkpoint, small_model_config, tmp_path):
    ck = Path(tiny_checkpoint)
    assert sorted(p.name for p in ck.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, TEXT_ENCODER_DIR])
    assert not any(p.suffix == ".safetensors" or p.suffix == ".bin" for p in (ck / TEXT_ENCODER_DIR).iterdir())
    meta = json.loads((ck / CONFIG_FILE).read_text())
    assert meta["labels"] == {"emotions": list(labels.EMOTIONS), "sentiments": list(labels.SENTIMENTS),
                              "modalities": list(labels.MODALITIES)}
    assert set(meta["versions"]) == {"mmsa_ray", "torch", "transformers"}
    assert ModelConfig.from_dict(meta["model"]) == small_model_config

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    model = checkpoint.load(ck)
    assert torch.equal(torch.random.get_rng_state(), state), "load must not consume the caller's RNG"
    assert not model.training
    batch = _batch(model.config)
    np.savez(tmp_path / "batch.npz", **{k: v.numpy() for k, v in batch.items()})
    # The conftest fixture seeded torch with 0 before building: rebuild the same model here.
    torch.manual_seed(0)
    fresh = MultimodalSentimentModel(small_model_config).eval()
    with torch.no_grad():
        want = fresh(batch)
        got = model(batch)
    _assert_outputs_equal(want, got)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, "-c", _ROUND_TRIP, str(ck), str(tmp_path / "batch.npz"), str(tmp_path / "out.npz")],
                   check=True, env=env, cwd=tmp_path, timeout=300)
    out = np.load(tmp_path / "out.npz")
    assert not out["training"]
    np.testing.assert_array_equal(out["emotion"], want["emotion"].numpy())
    np.testing.assert_array_equal(out["sentiment"], want["sentiment"].numpy())
    np.testing.assert_array_equal(out["video"], want["per_modality"]["video"]["emotion"].numpy())


def _broken_copy(src: Path, dst: Path, edit=None, weights: bool = True, text: bool = True, config: bool = True) -> Path:
    """A checkpoint directory linking src's big files, with config.json optionally edited."""
    dst.mkdir()
    if weights:
        (dst / WEIGHTS_FILE).symlink_to(src / WEIGHTS_FILE)
    if text:
        (dst / TEXT_ENCODER_DIR).symlink_to(src / TEXT_ENCODER_DIR)
    if config:
        meta = json.loads((src / CONFIG_FILE).read_text())
        if edit:
            edit(meta)
        (dst / CONFIG_FILE).write_text(json.dumps(meta))
    return dst


def test_load_errors_name_the_problem(tiny_checkpoint, tmp_path):
    src = Path(tiny_checkpoint)
    load = checkpoint.load
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load(_broken_copy(src, tmp_path / "noconfig", config=False))
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load(_broken_copy(src, tmp_path / "noweights", weights=False))
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load(_broken_copy(src, tmp_path / "notext", text=False))

    def relabel(meta):
        meta["labels"]["emotions"] = ["happy", "sad"]

    with pytest.raises(ValueError, match="label sets"):
        load(_broken_copy(src, tmp_path / "labels", relabel))

    def newer(meta):
        meta["format_version"] = 99

    with pytest.raises(ValueError, match="newer than this mmsa_ray supports"):
        load(_broken_copy(src, tmp_path / "newer", newer))

    def wider(meta):
        meta["model"]["embed_dim"] = 64

    with pytest.raises(ValueError, match="does not match its config.json"):
        load(_broken_copy(src, tmp_path / "wider", wider))
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(tmp_path / "garbled")


def test_save_is_atomic_and_overwrites_only_checkpoints(model, tmp_path, monkeypatch):
    target = tmp_path / "ck"
    checkpoint.save(model, target)
    first = (target / WEIGHTS_FILE).stat().st_mtime_ns
    checkpoint.save(model, target)  # replacing a checkpoint is fine
    assert (target / WEIGHTS_FILE).stat().st_mtime_ns >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"], "no temporary directories left behind"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an mmsa_ray checkpoint"):
        checkpoint.save(model, other)
    assert (other / "todo.txt").read_text() == "keep me"

    # A save that fails midway leaves neither a half checkpoint nor its temporary directory.
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(model, tmp_path / "partial")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "notes"]
