"""Where the shipped starter checkpoint lives, checked whole before anyone loads it."""

from __future__ import annotations

from pathlib import Path

STARTER = "meld-text"
PRETRAINED_DIR = Path(__file__).resolve().parent  # the package folder that ships the checkpoints


def default_checkpoint(pretrained_dir: Path = PRETRAINED_DIR) -> Path:
    """The shipped starter checkpoint's directory; FileNotFoundError naming what is missing."""
    path = pretrained_dir / STARTER
    for name in ("config.json", "model.safetensors", "text_encoder/config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"the starter checkpoint is incomplete: {path / name} is missing "
                                    "(reinstall mmsa_ray, or pass --checkpoint DIR)")
    return path
