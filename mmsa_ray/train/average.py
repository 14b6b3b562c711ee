"""`mmsa-ray average CKPT CKPT ... --output DIR`: one checkpoint whose weights are the mean of
several (a "model soup", Wortsman et al. 2022): the size and cost of one model, often close to
the accuracy of the runs' probability ensemble.

It only works for runs that started from the same initial weights and differ in data order and
dropout (`mmsa-ray train --init-seed N --seed S` with one N): fine-tuning from one point keeps
them in one basin, where their mean is a model too. Runs whose trainable parts started from
different random points average to noise (MELD dev emotion weighted F1 0.487 against 0.59 for
each, the starter's card), so they are refused: their randomly initialised weights (projections,
fusion, heads) point in unrelated directions: cosine similarity 0.00 between the starter's
seeds, 0.98 between two of its runs from one start (SAME_START_COSINE lies between).

The averaged checkpoint carries no calibration (the inputs' does not hold for their mean):
fit it with `mmsa-ray calibrate --checkpoint DIR --meld-dir MELD`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mmsa_ray import checkpoint
from mmsa_ray.model import FROM_SCRATCH

# below this cosine similarity of two runs' randomly initialised weight matrices, they did not
# start from one point and are refused
SAME_START_COSINE = 0.5
_SEEDED_PREFIXES = tuple(f"{name}." for name in FROM_SCRATCH)  # what `train` initialises from its seed


def _seeded_vector(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight matrices and kernels a training seed initialises at random (projections, audio
    encoder, fusion, heads), flattened, float32. Biases and norm scales are left out: they start
    at constants, the same whatever the seed."""
    parts = [t.flatten().float() for k, t in sorted(state.items())
             if k.startswith(_SEEDED_PREFIXES) and t.dim() > 1 and t.is_floating_point()]
    return torch.cat(parts) if parts else torch.zeros(0)


def start_similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine similarity of two state dicts' seeded weights: ~1 for runs from one initial
    point, ~0 for runs from different ones."""
    va, vb = _seeded_vector(a), _seeded_vector(b)
    if not len(va):
        return 1.0
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))


def average_models(paths: list[str]):
    """The model whose every floating-point tensor is the mean of the checkpoints' (loaded on CPU).
    Raises ValueError for fewer than two checkpoints, different model configs, or runs that did
    not start from the same initial weights."""
    if len(paths) < 2:
        raise ValueError(f"average needs at least two checkpoints, got {len(paths)}")
    models = [checkpoint.load(p, map_location="cpu") for p in paths]
    first = models[0].config.to_dict()
    for path, model in zip(paths[1:], models[1:], strict=True):
        if model.config.to_dict() != first:
            diff = sorted(k for k in first if first[k] != model.config.to_dict().get(k))
            raise ValueError(f"{path} and {paths[0]} are different models (model config differs in {diff})")
    states = [m.state_dict() for m in models]
    for path, state in zip(paths[1:], states[1:], strict=True):
        cos = start_similarity(states[0], state)
        if cos < SAME_START_COSINE:
            raise ValueError(
                f"{path} and {paths[0]} did not start from the same initial weights (cosine similarity of their "
                f"randomly initialised weights {cos:.2f}, below {SAME_START_COSINE}): their average is no model. "
                "Train the runs to average with one --init-seed")
    mean = {k: _mean([s[k] for s in states]) for k in states[0]}
    models[0].load_state_dict(mean)
    return models[0]


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The element-wise mean in float32, cast back; a tensor equal in every run (a frozen layer, an
    integer counter) is kept bit for bit, so a compact save still finds it equal to the base."""
    first = tensors[0]
    if not first.is_floating_point() or all(torch.equal(first, t) for t in tensors[1:]):
        return first
    return torch.stack([t.float() for t in tensors]).mean(0).to(first.dtype)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmsa-ray average",
                                description="Average the weights of checkpoints trained from one initial point "
                                            "(mmsa-ray train --init-seed N with different --seed) into one.")
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoint directories of the same model")
    p.add_argument("--output", required=True, help="checkpoint directory to write (an existing checkpoint is replaced)")
    p.add_argument("--compact", action="store_true",
                   help="store only what differs from the pretrained encoders (as `train --compact`)")
    return p


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import console

    args = console.parse_args(build_parser(), argv)
    model = average_models(args.checkpoints)
    out = checkpoint.save(model, args.output, compact=args.compact)
    print(f"averaged {len(args.checkpoints)} checkpoints into {out} (uncalibrated: run "
          f"`mmsa-ray calibrate --checkpoint {out} --meld-dir MELD`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
