"""calibrate.py and its use: temperature scaling, ECE / NLL / Brier against hand-computed
values, the uncertainty threshold, and a checkpoint that stores, applies and round-trips its
calibration (an old one without any still loads, uncalibrated)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsa_ray import calibrate, checkpoint
from mmsa_ray.features import collate
from mmsa_ray.predict import Predictor


def test_measures_agree_with_hand_computed_values():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1])
    # top probabilities 0.9, 0.6, 0.7, 0.8 in bins (0.867, 0.933], (0.533, 0.6], (0.667, 0.733], (0.733, 0.8];
    # correct: yes, no, yes, yes -> ECE = (|1 - .9| + |0 - .6| + |1 - .7| + |1 - .8|) / 4 = 0.3
    assert calibrate.expected_calibration_error(probs, labels) == pytest.approx(0.3)
    # two bins: (0.5, 1] holds all four, accuracy 0.75, mean confidence 0.75 -> 0
    assert calibrate.expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.0)
    assert calibrate.nll(probs, labels) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])))
    assert calibrate.brier(probs, labels) == pytest.approx(np.mean([0.02, 0.72, 0.18, 0.08]))
    points = calibrate.reliability(probs, labels, bins=2)
    assert points == [{"lo": 0.5, "hi": 1.0, "n": 4, "confidence": pytest.approx(0.75), "accuracy": 0.75}]


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 4-class model three times as sure as it should be: labels drawn from
    softmax(z), logits reported as 3 z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, 4))
    p = calibrate.softmax(z)
    y = np.array([rng.choice(4, p=row) for row in p])
    return 3.0 * z, y


def test_temperature_fitted_on_overconfident_logits_helps_on_data_held_aside():
    fit_z, fit_y = _overconfident(3000, 0)
    held_z, held_y = _overconfident(3000, 1)
    t = calibrate.fit_temperature(fit_z, fit_y)
    assert 2.6 < t < 3.4  # the factor the logits were inflated by
    raw, scaled = calibrate.softmax(held_z), calibrate.softmax(held_z, t)
    assert calibrate.nll(scaled, held_y) < calibrate.nll(raw, held_y) - 0.2
    assert calibrate.expected_calibration_error(scaled, held_y) < 0.03 < calibrate.expected_calibration_error(raw,
                                                                                                             held_y)
    assert (scaled.argmax(1) == raw.argmax(1)).all()  # scaling never changes a class


def _top_miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """7-class logits whose top class is right with probability sigmoid(0.5 logit(p_top) + 0.8),
    p_top = max softmax(z): unsure rows are right more often than they say, sure ones less,
    a shape no single temperature undoes."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 7))
    p = calibrate.softmax(z)
    top = p.argmax(1)
    right = rng.random(n) < 1 / (1 + np.exp(-(0.5 * np.log(p.max(1) / (1 - p.max(1))) + 0.8)))
    others = [rng.choice([k for k in range(7) if k != t]) for t in top]
    return z, np.where(right, top, others)


def test_top_label_step_fixes_what_temperature_cannot_on_data_held_aside():
    fit_z, fit_y = _top_miscalibrated(4000, 3)
    held_z, held_y = _top_miscalibrated(4000, 4)
    t = calibrate.fit_temperature(fit_z, fit_y)
    slope, intercept = calibrate.fit_top_label(calibrate.softmax(fit_z, t), fit_y)
    head = {"temperature": t, "top_slope": slope, "top_intercept": intercept}
    scaled, both = calibrate.softmax(held_z, t), calibrate.calibrated_probs(held_z, head)
    ece = calibrate.expected_calibration_error
    assert ece(both, held_y) < 0.03 < ece(scaled, held_y)
    assert calibrate.nll(both, held_y) < calibrate.nll(scaled, held_y)
    assert (both.argmax(1) == held_z.argmax(1)).all() and np.allclose(both.sum(1), 1.0)
    # without the top-label keys a record is temperature only (checkpoints written before them)
    assert np.allclose(calibrate.calibrated_probs(held_z, {"temperature": t}), scaled)


def test_top_label_step_keeps_the_class_and_the_proportions():
    probs = np.array([[0.40, 0.35, 0.25], [0.90, 0.06, 0.04], [0.35, 0.25, 0.40]])
    out = calibrate.recalibrate_top(probs, slope=1.0, intercept=-2.0)  # pulls every top probability down
    # row 0: sigmoid(logit(0.4) - 2) = 0.083 would fall under the runner-up; floored where the two tie
    assert out[0, 0] == pytest.approx(0.35 / (0.60 + 0.35), abs=1e-5) == pytest.approx(out[0, 1], abs=1e-5)
    assert out.argmax(1).tolist() == [0, 0, 2]  # a tie at the floor never hands the label to an earlier class
    assert out[1, 0] == pytest.approx(1 / (1 + np.exp(-(np.log(9) - 2))))
    assert out[1, 1] / out[1, 2] == pytest.approx(0.06 / 0.04) and out.sum(1) == pytest.approx([1, 1, 1])


def test_threshold_and_coverage():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 0, 1])  # correct: yes, yes, no, yes, no
    # the most confident rows: 2/2 correct, then 2/3, 3/4, 3/5: the most rows reaching 0.75 are 4 (down to 0.7)
    assert calibrate.confident_threshold(probs, labels, 0.75) == (0.7, 0.8)
    assert calibrate.confident_threshold(probs, labels, 1.0) == (0.9, 0.4)
    rc = calibrate.risk_coverage(probs, labels, coverages=(1.0, 0.4))
    assert [(r["n"], r["accuracy"]) for r in rc] == [(5, 0.6), (2, 1.0)]


@pytest.fixture()
def calibrated_copy(tiny_checkpoint, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    return path


def test_checkpoint_stores_applies_and_round_trips_its_calibration(calibrated_copy, tiny_checkpoint):
    plain = Predictor.from_checkpoint(str(tiny_checkpoint), device="cpu")
    assert not plain.calibrated and checkpoint.read_calibration(tiny_checkpoint) is None  # an old checkpoint
    batch = collate([plain.dummy_features()])
    (row,) = plain.predict_batch(batch)
    assert row["emotion_uncertain"] is None and row["sentiment_uncertain"] is None
    top = max(row["emotion_probs"])

    def with_calibration(temperature: float, threshold: float, **top) -> dict:
        record = {head: {"temperature": temperature, "threshold": threshold, **top}
                  for head in ("emotion", "sentiment")}
        checkpoint.write_calibration(calibrated_copy, {**record, "fitted_on": "a test"})
        assert checkpoint.read_calibration(calibrated_copy) == {**record, "fitted_on": "a test"}
        (out,) = Predictor.from_checkpoint(str(calibrated_copy), device="cpu").predict_batch(batch)
        return out

    # temperature 1: the same probabilities; the flag flips at the threshold
    assert with_calibration(1.0, top + 1e-3)["emotion_uncertain"] is True
    out = with_calibration(1.0, top - 1e-3)
    assert out["emotion_uncertain"] is False and out["emotion_probs"] == pytest.approx(row["emotion_probs"], abs=1e-6)
    # temperature 2: softmax(z / 2), the same class
    logits = np.log(np.asarray(row["emotion_probs"], dtype=np.float64))
    out = with_calibration(2.0, 0.0)
    assert out["emotion_probs"] == pytest.approx(calibrate.softmax(logits[None], 2.0)[0].tolist(), abs=1e-5)
    assert out["emotion"] == row["emotion"]
    # and the top-label step after it: what calibrate.calibrated_probs gives, the same class
    top_step = {"top_slope": 0.7, "top_intercept": 0.3}
    out = with_calibration(2.0, 0.0, **top_step)
    expected = calibrate.calibrated_probs(logits[None], {"temperature": 2.0, **top_step})[0]
    assert out["emotion_probs"] == pytest.approx(expected.tolist(), abs=1e-5) and out["emotion"] == row["emotion"]
    # the weights, and so the model_id, stay as they were; config.json keeps everything else
    assert checkpoint.model_id(calibrated_copy).split("-")[-1] == plain.model_id.split("-")[-1]
    meta = json.loads((calibrated_copy / "config.json").read_text())
    assert meta["model"] == json.loads((tiny_checkpoint / "config.json").read_text())["model"]


def test_calibration_record_of_both_heads():
    z, y = _overconfident(600, 2)
    record = calibrate.calibration_record({"emotion": z, "sentiment": z[:, :3]}, {"emotion": y, "sentiment": y % 3},
                                          fitted_on="synthetic")
    assert record["fitted_on"] == "synthetic"
    e = record["emotion"]
    assert e["ece_after"] < e["ece_before"] and e["nll_after"] < e["nll_before"] and e["temperature"] > 2
    assert 0.5 < e["top_slope"] < 2  # after the temperature, little is left for the top-label step to do
    assert e["target_accuracy"] == calibrate.TARGET_ACCURACY["emotion"] and 0 < e["coverage"] <= 1


MELD = os.environ.get("MELD_DIR") or str(Path(__file__).resolve().parents[2] / "shared" / "meld")


@pytest.mark.slow
@pytest.mark.skipif(not (Path(MELD) / "dev_sent_emo.csv").is_file(),
                    reason="real MELD CSVs not found in $MELD_DIR or ../shared/meld")
def test_calibrate_and_evaluate_commands_on_the_starter(tmp_path):
    """`mmsa-ray calibrate` as the model card runs it (on a copy of the starter, on the first 120
    dev utterances), then `mmsa-ray evaluate`: the calibration is stored, applied and reported."""
    from mmsa_ray.pretrained import default_checkpoint

    starter = tmp_path / "meld-text"
    shutil.copytree(default_checkpoint(), starter)
    weights = (starter / "model.safetensors").read_bytes()
    mmsa_ray = str(Path(sys.executable).with_name("mmsa-ray"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    common = ["--meld-dir", MELD, "--limit", "120", "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run([mmsa_ray, "calibrate", "--checkpoint", str(starter), *common], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^emotion: temperature [\d.]+, top -?[\d.]+ x logit \+ -?[\d.]+; ECE [\d.]+ -> [\d.]+",
                     r.stdout, re.M), r.stdout
    record = checkpoint.read_calibration(starter)
    assert record["fitted_on"] == "MELD dev (120 clips)" and (starter / "model.safetensors").read_bytes() == weights
    r = subprocess.run([mmsa_ray, "evaluate", "--checkpoint", str(starter), *common, "--output", str(tmp_path / "ev")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["modalities"] == "text" and report["calibrated"] is True  # what the starter reads, and applies
    cal = report["calibration"]["emotion"]
    assert cal["calibrated"]["nll"] <= cal["raw"]["nll"] + 1e-6  # fitted on these very clips
    assert [r["coverage"] for r in cal["risk_coverage"]] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert (tmp_path / "ev" / "reliability_emotion.png").stat().st_size > 1000
    assert "## calibration" in (tmp_path / "ev" / "report.md").read_text()
