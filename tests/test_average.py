"""`mmsa-ray average`: the weight mean of runs from one start, refused for runs from different
starts or of different models (no Ray: checkpoints made here)."""

from __future__ import annotations

import json

import pytest
import torch

from mmsa_ray import checkpoint, cli
from mmsa_ray.model import ModelConfig
from mmsa_ray.train.average import SAME_START_COSINE, start_similarity
from mmsa_ray.train.driver import reset_trainable


def _fine_tuned(start, path, seed: int, init_seed: int | None = None):
    """A copy of the model at `start` whose every trained parameter moved a little (as a run of
    train --finetune text --seed `seed` would: token embeddings and video trunk frozen), optionally
    re-initialised from `init_seed` first; saved to `path`."""
    model = checkpoint.load(start)
    if init_seed is not None:
        reset_trainable(model, init_seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("video_backbone.", "text_encoder.embeddings.")):
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    checkpoint.save(model, path)
    return model


def test_average_is_the_mean_of_runs_from_one_start_and_drops_calibration(tiny_checkpoint, tmp_path, capsys):
    runs = [_fine_tuned(tiny_checkpoint, tmp_path / f"s{s}", seed=s) for s in (1, 2, 3)]
    checkpoint.write_calibration(tmp_path / "s1", {"emotion": {"temperature": 1.5}, "sentiment": {"temperature": 1.2}})
    assert start_similarity(runs[0].state_dict(), runs[1].state_dict()) > 0.99

    rc = cli.main(["average", *(str(tmp_path / f"s{s}") for s in (1, 2, 3)), "--compact",
                   "--output", str(tmp_path / "soup")])
    assert rc == 0
    assert f"averaged 3 checkpoints into {tmp_path / 'soup'}" in capsys.readouterr().out
    soup = checkpoint.load(tmp_path / "soup").state_dict()
    states = [r.state_dict() for r in runs]
    for name in ("text_encoder.encoder.layer.0.attention.self.query.weight", "fusion.0.weight", "emotion_head.weight",
                 "audio_encoder.conv.0.weight"):
        mean = sum(s[name] for s in states) / 3
        if name.startswith("text_encoder."):  # compact: fine-tuned encoder layers are stored in float16
            mean = mean.half().float()
        torch.testing.assert_close(soup[name], mean, rtol=0, atol=1e-6)
    assert not torch.equal(soup["emotion_head.weight"], states[0]["emotion_head.weight"])
    # what every run shares stays bit for bit, so the compact save leaves it to the base MiniLM
    words = "text_encoder.embeddings.word_embeddings.weight"
    assert torch.equal(soup[words], states[0][words])
    assert words in json.loads((tmp_path / "soup" / "config.json").read_text())["compact"]["base_tensors"]
    assert checkpoint.read_calibration(tmp_path / "soup") is None  # the inputs' calibration does not hold for the mean


def test_average_refuses_runs_from_different_starts_and_different_models(tiny_checkpoint, small_model_config,
                                                                          tmp_path, capsys):
    import dataclasses

    from mmsa_ray.model import MultimodalSentimentModel

    a = _fine_tuned(tiny_checkpoint, tmp_path / "a", seed=1)
    b = _fine_tuned(tiny_checkpoint, tmp_path / "b", seed=2, init_seed=7)  # trainable parts from another seed
    assert abs(start_similarity(a.state_dict(), b.state_dict())) < SAME_START_COSINE

    assert cli.main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "did not start from the same initial weights" in err and "--init-seed" in err
    assert not (tmp_path / "out").exists()

    other: ModelConfig = dataclasses.replace(small_model_config, text_pooling="current")
    checkpoint.save(MultimodalSentimentModel(other), tmp_path / "other")
    assert cli.main(["average", str(tmp_path / "a"), str(tmp_path / "other"), "--output", str(tmp_path / "out")]) == 2
    assert "are different models (model config differs in ['text_pooling'])" in capsys.readouterr().err

    assert cli.main(["average", str(tmp_path / "a"), "--output", str(tmp_path / "out")]) == 2
    assert "average needs at least two checkpoints, got 1" in capsys.readouterr().err


def test_train_init_seed_gives_runs_of_different_seeds_one_start(small_model_config, tmp_path):
    """`train --init-seed N --seed S`: the trainable parts start from N whatever S (the runs can be
    averaged); without --init-seed each seed starts from its own point (they cannot)."""
    from mmsa_ray.train import driver
    from mmsa_ray.train.loop import TrainConfig

    def start(name: str, **kw):
        (tmp_path / name).mkdir()
        return driver.initial_model(small_model_config, TrainConfig(**kw), str(tmp_path / name))[0].state_dict()

    shared = [start(f"shared{s}", seed=s, init_seed=0) for s in (1, 2)]
    own = [start(f"own{s}", seed=s) for s in (1, 2)]
    for name in ("emotion_head.weight", "fusion.0.weight", "text_proj.weight"):
        assert torch.equal(shared[0][name], shared[1][name]), name
    assert start_similarity(*shared) == pytest.approx(1.0, abs=1e-5)
    assert abs(start_similarity(*own)) < 0.1
    assert driver.build_parser().parse_args(["--meld-dir", "m", "--seed", "2", "--init-seed", "0"]).init_seed == 0
