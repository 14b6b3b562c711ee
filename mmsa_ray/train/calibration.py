"""The calibration part of an evaluation report: expected calibration error, negative
log-likelihood and Brier score of the raw softmax and of the checkpoint's calibrated
probabilities, the reliability diagram, and the risk-coverage table (how accurate the most
confident rows are). The measures themselves are mmsa_ray.calibrate's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmsa_ray.calibrate import (
    brier,
    calibrated_probs,
    expected_calibration_error,
    nll,
    reliability,
    risk_coverage,
    softmax,
)


def calibration_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                        calibration: dict | None) -> dict:
    """Per head: the measures of the raw softmax ("raw") and, for a calibrated checkpoint,
    of its calibrated probabilities ("calibrated"), with the reliability points and the
    risk-coverage table of the probabilities the checkpoint serves."""
    out = {}
    for head in ("emotion", "sentiment"):
        y = np.asarray(labels[head])
        variants = {"raw": softmax(logits[head])}
        if calibration:
            variants["calibrated"] = calibrated_probs(logits[head], calibration[head])
        served = variants.get("calibrated", variants["raw"])
        out[head] = {
            **{name: {"ece": expected_calibration_error(p, y), "nll": nll(p, y), "brier": brier(p, y)}
               for name, p in variants.items()},
            "reliability": {name: reliability(p, y) for name, p in variants.items()},
            "risk_coverage": risk_coverage(served, y),
        }
        if calibration:
            c = calibration[head]
            confident = served.max(axis=1) >= c["threshold"]
            out[head]["uncertain"] = {
                "threshold": c["threshold"], "target_accuracy": c["target_accuracy"],
                "confident_share": float(confident.mean()),
                "confident_accuracy": float((served[confident].argmax(1) == y[confident]).mean())
                if confident.any() else None}
    return out


def calibration_markdown(cal: dict, calibrated: bool) -> list[str]:
    lines = ["", "## calibration", "",
             "Expected calibration error (15 equal-width bins of the top probability), negative log-likelihood "
             "and Brier score" + ("; calibrated = the checkpoint's temperature and top-label step, as label and "
                                  "serve apply them."
                                  if calibrated else "; this checkpoint is uncalibrated (`mmsa-ray calibrate`)."),
             "", "| head | probabilities | ECE | NLL | Brier |", "| --- | --- | --- | --- | --- |"]
    for head, m in cal.items():
        for name in ("raw", "calibrated"):
            if name in m:
                lines.append(f"| {head} | {name} | {m[name]['ece']:.4f} | {m[name]['nll']:.4f} | "
                             f"{m[name]['brier']:.4f} |")
    for head, m in cal.items():
        lines += ["", f"![reliability, {head}](reliability_{head}.png)", "",
                  f"risk-coverage, {head} (the most confident share of clips):", "",
                  "| coverage | clips | accuracy | weighted F1 | lowest top probability |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['coverage']:.0%} | {r['n']} | {r['accuracy']:.4f} | {r['weighted_f1']:.4f} | "
                  f"{r['threshold']:.3f} |" for r in m["risk_coverage"]]
        if "uncertain" in m and m["uncertain"]["confident_accuracy"] is not None:
            u = m["uncertain"]
            lines += ["", f"uncertain below {u['threshold']:.3f}: the confident {u['confident_share']:.1%} of clips "
                          f"reach accuracy {u['confident_accuracy']:.4f} (target on dev {u['target_accuracy']:.2f})"]
    return lines


def reliability_png(points: dict[str, list[dict]], path: str | os.PathLike, title: str) -> Path:
    """The reliability diagram (accuracy against mean confidence per bin, the diagonal is
    perfect calibration; point size = clips in the bin) of each probability variant, as a PNG."""
    import altair as alt

    rows = [{**p, "probabilities": name} for name, pts in points.items() for p in pts]
    diagonal = alt.Chart(alt.Data(values=[{"x": 0, "y": 0}, {"x": 1, "y": 1}])).mark_line(
        color="#999", strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("confidence:Q", scale=alt.Scale(domain=[0, 1]), title="mean top probability in the bin"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy in the bin"),
        color=alt.Color("probabilities:N"))
    curves = base.mark_line().encode(order="confidence:Q") + base.mark_circle(opacity=0.8).encode(
        size=alt.Size("n:Q", title="clips", scale=alt.Scale(range=[20, 400])))
    path = Path(path)
    (diagonal + curves).properties(title=title, width=320, height=320).save(str(path), format="png",
                                                                             scale_factor=2)
    return path
