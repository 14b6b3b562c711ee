"""Opt-in late fusion of the checkpoint's emotion with the main face's: `--fuse text=1,face=W`.

    fused_probs ∝ exp((w_text · log p_text + w_face · log p_face) / (w_text + w_face))
    (log-linear pooling: a weighted geometric mean, the weights normalized over the inputs present)

p_text is the row's `emotion_probs`: the checkpoint's calibrated probabilities (the starter
reads text alone, hence the name); p_face is `face_emotion_probs`, FER-2013's softmax of the
main face (uncalibrated: no emotion data of faces in conversation was available to calibrate
it). A row with only one of the two gets that one's probabilities as they are; a row with
neither gets no fused emotion. `emotion` itself never changes: fusion fills `fused_emotion` and
`fused_emotion_probs` beside it. No weight is validated: MELD's videos, the only data with
both modalities labeled, are not available here, so any W is the user's choice, to check on
their own data (the report shows how often face and text disagree).
"""

from __future__ import annotations

import numpy as np

from mmsa_ray.labels import EMOTIONS

FUSED_INPUTS = {"text": "emotion_probs", "face": "face_emotion_probs"}  # weight name -> the row column it weighs


def parse_fuse(spec: str) -> dict[str, float]:
    """"text=1,face=0.5" -> {"text": 1.0, "face": 0.5}; ValueError naming what is wrong."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in FUSED_INPUTS:
            raise ValueError(f"fuse takes NAME=WEIGHT pairs with NAME in {sorted(FUSED_INPUTS)}, got {part!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"fuse weight of {name} must be a number, got {value!r}") from None
        if not (weight >= 0 and np.isfinite(weight)):
            raise ValueError(f"fuse weight of {name} must be a finite number >= 0, got {value!r}")
        weights[name] = weight
    if not weights or not any(weights.values()):
        raise ValueError(f"fuse needs at least one weight above 0, got {spec!r}")
    return weights


def fuse(row: dict, weights: dict[str, float]) -> dict:
    """{"fused_emotion", "fused_emotion_probs"} of a row with `emotion_probs` and
    `face_emotion_probs` (either may be None), by `weights` (parse_fuse)."""
    logs = [(w, np.log(np.clip(np.asarray(row[FUSED_INPUTS[name]], np.float64), 1e-12, 1.0)))
            for name, w in weights.items() if w > 0 and row.get(FUSED_INPUTS[name]) is not None]
    if not logs:
        return {"fused_emotion": None, "fused_emotion_probs": None}
    z = sum(w * log_p for w, log_p in logs) / sum(w for w, _ in logs)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    return {"fused_emotion": EMOTIONS[int(probs.argmax())], "fused_emotion_probs": [float(p) for p in probs]}
