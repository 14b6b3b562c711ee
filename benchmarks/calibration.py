"""Calibration methods compared on a checkpoint's MELD dev logits: the expected calibration
error (15 bins) and NLL of each, in-sample (fitted and scored on all of dev, as `mmsa-ray
calibrate` fits) and by 5-fold cross-validation on dev (fitted on four fifths, scored on the
fifth left out; mean of --shuffles shuffles), the number to expect on new data.

    python benchmarks/calibration.py [--checkpoint DIR] [--meld-dir ../shared/meld]

Methods: the raw softmax; temperature scaling alone; vector scaling (a scale and a bias per
class, by NLL); temperature then an isotonic map of the top probability; temperature then the
top-label step that `mmsa-ray calibrate` ships (mmsa_ray.calibrate). The starter's card quotes
this table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from mmsa_ray import calibrate as C

Fit = Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]  # (logits, labels) -> logits -> probs


def raw(z, y):
    return C.softmax


def temperature(z, y):
    t = C.fit_temperature(z, y)
    return lambda q: C.softmax(q, t)


def vector_scaling(z, y):
    from scipy.optimize import minimize

    k = z.shape[1]
    res = minimize(lambda p: C.nll(C.softmax(z * p[:k] + p[k:]), y), np.r_[np.ones(k), np.zeros(k)],
                   method="L-BFGS-B")
    return lambda q: C.softmax(q * res.x[:k] + res.x[k:])


def temperature_isotonic(z, y):
    from sklearn.isotonic import IsotonicRegression

    t = C.fit_temperature(z, y)
    p = C.softmax(z, t)
    iso = IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip").fit(p.max(1), p.argmax(1) == y)

    def apply(q):
        p = C.softmax(q, t)
        return C.with_top_probability(p, iso.predict(p.max(1)))
    return apply


def temperature_top_label(z, y):
    t = C.fit_temperature(z, y)
    a, b = C.fit_top_label(C.softmax(z, t), y)
    return lambda q: C.calibrated_probs(q, {"temperature": t, "top_slope": a, "top_intercept": b})


METHODS: dict[str, Fit] = {
    "raw softmax": raw, "temperature": temperature, "vector scaling": vector_scaling,
    "temperature + isotonic top probability": temperature_isotonic,
    "temperature + top-label step (shipped)": temperature_top_label,
}


def scores(fit: Fit, z: np.ndarray, y: np.ndarray, shuffles: int) -> dict[str, float]:
    from sklearn.model_selection import StratifiedKFold

    p = fit(z, y)(z)
    cv_ece, cv_nll = [], []
    for seed in range(shuffles):
        held = np.zeros(z.shape)
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(z, y):
            held[test] = fit(z[train], y[train])(z[test])
        cv_ece.append(C.expected_calibration_error(held, y))
        cv_nll.append(C.nll(held, y))
    return {"ece": C.expected_calibration_error(p, y), "nll": C.nll(p, y),
            "cv_ece": float(np.mean(cv_ece)), "cv_ece_sd": float(np.std(cv_ece)), "cv_nll": float(np.mean(cv_nll))}


def dev_logits(checkpoint_dir: str, meld_dir: str | None) -> tuple[dict, dict]:
    """The checkpoint's logits and labels of MELD dev, featurized as `mmsa-ray calibrate` does."""
    from mmsa_ray import checkpoint
    from mmsa_ray.train.evaluate import load_split, predict_logits

    model = checkpoint.load(checkpoint_dir, map_location="cpu")
    args = argparse.Namespace(modalities=",".join(model.config.modalities), features=None, meld_dir=meld_dir,
                              split="dev", cache_dir=None, limit=None)
    data, _, _, _ = load_split(argparse.ArgumentParser(), args, model)
    logits = predict_logits(model, data)
    return ({h: logits[h].astype(np.float64) for h in ("emotion", "sentiment")},
            {"emotion": np.asarray(data.emotion), "sentiment": np.asarray(data.sentiment)})


def main() -> None:
    from mmsa_ray.pretrained import default_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(default_checkpoint()))
    p.add_argument("--meld-dir", default=None, help="MELD root (default $MELD_DIR)")
    p.add_argument("--shuffles", type=int, default=5, help="shuffles of the 5-fold split (default 5)")
    args = p.parse_args()
    logits, labels = dev_logits(args.checkpoint, args.meld_dir)
    print(f"{args.checkpoint}: MELD dev, {len(labels['emotion'])} clips\n")
    print("| method | head | ECE in-sample | ECE 5-fold (sd) | NLL in-sample | NLL 5-fold |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, fit in METHODS.items():
        for head in ("emotion", "sentiment"):
            s = scores(fit, logits[head], labels[head], args.shuffles)
            print(f"| {name} | {head} | {s['ece']:.4f} | {s['cv_ece']:.4f} ({s['cv_ece_sd']:.4f}) | {s['nll']:.4f} | "
                  f"{s['cv_nll']:.4f} |")


if __name__ == "__main__":
    main()
