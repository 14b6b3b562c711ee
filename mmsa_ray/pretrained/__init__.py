"""The starter checkpoint shipped with the package: `mmsa-ray label` and `mmsa-ray serve`
use it when no `--checkpoint` is given.

`meld-text/` is a text-only model trained by the project's own command on MELD's
transcripts (its README.md is the model card: data, licence, command, metrics, limits).
It is stored compact (`mmsa_ray.checkpoint.save(model, directory, compact=True)`): only
what differs from the bundled MiniLM, rebuilt over it at load, offline.
"""

from mmsa_ray.pretrained.starter import STARTER, default_checkpoint

__all__ = ["STARTER", "default_checkpoint"]
