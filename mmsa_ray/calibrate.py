"""Calibrated probabilities and the "uncertain" flag: per-head temperature scaling fitted on
held-out logits, the threshold below which a calibrated top probability is flagged
uncertain, and the measures that say whether probabilities mean what they claim.

Temperature scaling (Guo et al., 2017): p = softmax(z / T) with one T > 0 per head, chosen
to minimise the negative log-likelihood of the dev labels. It never changes a row's class
(argmax is unchanged), only how sure the row says it is.

The threshold: the smallest calibrated top probability t such that the dev rows at or above t
reach `target_accuracy`; rows below it are flagged uncertain. The target and the share of dev
rows it keeps are stored with it.

A checkpoint stores the result in config.json under "calibration" (CALIBRATION_KEY):

    {"emotion": {"temperature": T, "threshold": t, "target_accuracy": a, "coverage": c,
                 "ece_before": e0, "ece_after": e1, "nll_before": ..., "nll_after": ...},
     "sentiment": {...}, "fitted_on": "MELD dev (1108 utterances)"}

Measures (all over rows with a label): expected calibration error with 15 equal-width bins
of the top probability, ECE = sum_b (n_b / N) |accuracy_b - mean confidence_b|; negative
log-likelihood (mean -log p of the true class, natural log); Brier score (mean over rows of
sum_k (p_k - [k = y])^2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CALIBRATION_KEY = "calibration"
ECE_BINS = 15
TARGET_ACCURACY = {"emotion": 0.70, "sentiment": 0.75}  # what a confident (not uncertain) row should reach on dev
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 [N, K] probabilities of logits [N, K] divided by `temperature`."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of integer labels [N] under probs [N, K]."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of the squared distance between probs [N, K] and the one-hot label."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(labels)]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def _top(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top probability [N], whether the top class is the label [N]) of probs [N, K]."""
    p = np.asarray(probs, dtype=np.float64)
    return p.max(axis=1), p.argmax(axis=1) == np.asarray(labels)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty one of `bins` equal-width bins of the top probability in (0, 1] (a
    confidence of exactly b/bins falls in bin b-1): {lo, hi, n, confidence, accuracy}, the
    reliability diagram's points."""
    confidence, correct = _top(probs, labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"lo": b / bins, "hi": (b + 1) / bins, "n": int((which == b).sum()),
             "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over the reliability bins: sum_b (n_b / N) |accuracy_b - mean confidence_b|."""
    points = reliability(probs, labels, bins)
    n = sum(pt["n"] for pt in points)
    return float(sum(pt["n"] / n * abs(pt["accuracy"] - pt["confidence"]) for pt in points))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in TEMPERATURE_BOUNDS minimising nll(softmax(logits / T), labels)."""
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    res = minimize_scalar(lambda log_t: nll(softmax(logits, np.exp(log_t)), labels), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def confident_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float) -> tuple[float, float]:
    """(t, coverage): the smallest top probability t such that the rows at or above it reach
    `target_accuracy`, and the share of rows they are. (1.0, 0.0) when no t reaches it."""
    confidence, correct = _top(probs, labels)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(hits >= target_accuracy)
    if not len(ok):
        return 1.0, 0.0
    k = int(ok.max())  # the most rows whose accuracy still reaches the target
    return float(confidence[order][k]), float((k + 1) / len(order))


def risk_coverage(probs: np.ndarray, labels: np.ndarray, coverages=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5)) -> list[dict]:
    """Accuracy and weighted F1 of the most confident share of rows, per coverage."""
    from sklearn.metrics import f1_score

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    order = np.argsort(-p.max(axis=1), kind="stable")
    out = []
    for c in coverages:
        keep = order[: max(1, int(round(c * len(order))))]
        pred = p[keep].argmax(axis=1)
        out.append({"coverage": c, "n": len(keep), "accuracy": float((pred == y[keep]).mean()),
                    "weighted_f1": float(f1_score(y[keep], pred, average="weighted", zero_division=0)),
                    "threshold": float(p[keep].max(axis=1).min())})
    return out


@dataclass(frozen=True)
class HeadCalibration:
    """One head's temperature and uncertainty threshold, with the dev numbers behind them."""

    temperature: float
    threshold: float  # calibrated top probability below which a row is flagged uncertain
    target_accuracy: float  # what the rows at or above the threshold reached on dev
    coverage: float  # the share of dev rows at or above the threshold
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    brier_before: float
    brier_after: float


def calibrate_head(logits: np.ndarray, labels: np.ndarray, target_accuracy: float) -> HeadCalibration:
    """Fit one head on held-out logits [N, K] and integer labels [N]."""
    t = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, t)
    threshold, coverage = confident_threshold(after, labels, target_accuracy)
    return HeadCalibration(
        temperature=round(t, 4), threshold=round(threshold, 6), target_accuracy=target_accuracy,
        coverage=round(coverage, 4),
        ece_before=round(expected_calibration_error(before, labels), 4),
        ece_after=round(expected_calibration_error(after, labels), 4),
        nll_before=round(nll(before, labels), 4), nll_after=round(nll(after, labels), 4),
        brier_before=round(brier(before, labels), 4), brier_after=round(brier(after, labels), 4))


def calibration_record(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], fitted_on: str,
                       targets: dict[str, float] | None = None) -> dict:
    """The config.json "calibration" value for both heads."""
    targets = targets or TARGET_ACCURACY
    record: dict = {head: asdict(calibrate_head(logits[head], labels[head], targets[head])) for head in targets}
    record["fitted_on"] = fitted_on
    return record
