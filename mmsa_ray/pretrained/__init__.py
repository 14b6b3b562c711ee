"""The starter checkpoint shipped with the package: `mmsa-ray label` and `mmsa-ray serve`
use it when no `--checkpoint` is given.

`meld-text/` is a text-only model trained by the project's own command on MELD's
transcripts (its README.md is the model card: data, licence, command, metrics, limits).
It is stored compact (`MultimodalSentimentModel.save(compact=True)`): only what differs
from the bundled MiniLM, rebuilt over it at load, offline.
"""

from __future__ import annotations

from pathlib import Path

STARTER = "meld-text"


def default_checkpoint() -> Path:
    """The shipped starter checkpoint's directory; FileNotFoundError naming what is missing."""
    path = Path(__file__).resolve().parent / STARTER
    for name in ("config.json", "model.safetensors", "text_encoder/config.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"the starter checkpoint is incomplete: {path / name} is missing (reinstall mmsa_ray, or pass --checkpoint DIR)")
    return path
