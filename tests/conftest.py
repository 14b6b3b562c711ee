"""Shared fixtures: one local Ray per test session, synthetic MELD-layout data, a small
random-initialised checkpoint. Everything runs on CPU and offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# tests/mediagen.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
# Tests never reach a model hub: the defaults load offline, and a test that tried to
# download would fail here instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with more logical CPUs than this 2-core machine has: Train workers
    reserve CPUs that Ray Data would otherwise need, and on 2 CPUs Data starves."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            object_store_memory=1024**3,
            include_dashboard=False,
            log_to_driver=True,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """Synthetic MELD layout: 12/6/4 clips per emotion in train/dev/test."""
    from mmsa_ray.train.sample_data import make_sample_data

    root = tmp_path_factory.mktemp("sample") / "MELD.Raw"
    make_sample_data(root, n_per_class_train=12, n_per_class_dev=6, n_per_class_test=4, seed=0)
    return root


@pytest.fixture(scope="session")
def small_model_config():
    """The default model on 8 frames of 64x64: the same code, a fraction of r3d_18's cost."""
    from mmsa_ray.media import DecodeConfig
    from mmsa_ray.model import ModelConfig

    return ModelConfig(decode=DecodeConfig(num_frames=8, height=64, width=64))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, small_model_config) -> Path:
    """A saved, seeded, random-initialised small model."""
    import torch

    from mmsa_ray import checkpoint
    from mmsa_ray.model import MultimodalSentimentModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny"
    checkpoint.save(MultimodalSentimentModel(small_model_config), str(path))
    return path
