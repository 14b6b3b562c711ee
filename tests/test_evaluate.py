"""Metrics (scikit-learn) against hand-computed values, the PNG/JSON/Markdown report, and
`mmsa-ray evaluate` on a featurized Parquet directory (no Ray needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsa_ray import checkpoint
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS
from mmsa_ray.train import evaluate


def test_confusion_and_metrics_by_hand():
    # classes 0,1,2; true/pred pairs chosen so every number is easy to check
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    cm = evaluate.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = evaluate.metrics_from_confusion(cm)
    # precision: 2/2, 1/2, 1/2 ; recall: 2/3, 1/2, 1/1
    assert m["precision"] == pytest.approx([1.0, 0.5, 0.5])
    assert m["recall"] == pytest.approx([2 / 3, 0.5, 1.0])
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]  # 0.8, 0.5, 0.6667
    assert m["f1"] == pytest.approx(f1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["weighted_f1"] == pytest.approx((3 * f1[0] + 2 * f1[1] + 1 * f1[2]) / 6)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["support"] == [3, 2, 1] and m["n"] == 6


def test_zero_division_and_absent_classes():
    # class 2 never occurs (true or predicted): excluded from macro F1; class 1 predicted never -> P=0
    m = evaluate.classification_metrics([0, 1, 1], [0, 0, 0], 3)
    assert m["precision"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert m["recall"] == pytest.approx([1.0, 0.0, 0.0])
    assert m["f1"] == pytest.approx([0.5, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx(0.25)
    assert m["weighted_f1"] == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="outside"):
        evaluate.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="labels"):
        evaluate.confusion_matrix([0, 1], [0], 3)


def _assert_same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == (b[k] if k in ("n", "support", "confusion") else pytest.approx(b[k])), k


def test_metrics_from_confusion_equal_those_of_the_labels():
    """Training all-reduces confusion matrices: the matrix path gives the labels' numbers."""
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    p[:200] = t[:200]
    p[p == 6] = 0  # class 6 is never predicted: precision and recall 0, support kept
    m = evaluate.classification_metrics(t, p, 7)
    assert m["accuracy"] == pytest.approx(np.mean(t == p))
    assert m["weighted_f1"] == pytest.approx(sk.f1_score(t, p, average="weighted"))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(t, p, average="macro"))
    assert m["confusion"] == np.bincount(t * 7 + p, minlength=49).reshape(7, 7).tolist()
    assert m["precision"][6] == 0.0 and m["recall"][6] == 0.0 and m["support"][6] == int((t == 6).sum())
    _assert_same_metrics(evaluate.metrics_from_confusion(np.asarray(m["confusion"])), m)
    # a class absent from both rows and columns stays out of the macro average
    cm = np.zeros((3, 3), np.int64)
    cm[0, 0], cm[1, 0] = 1, 2
    _assert_same_metrics(evaluate.metrics_from_confusion(cm), evaluate.classification_metrics([0, 1, 1], [0, 0, 0], 3))
    empty = evaluate.metrics_from_confusion(np.zeros((3, 3), np.int64))
    assert empty["n"] == 0 and empty["weighted_f1"] == 0.0 and empty["support"] == [0, 0, 0]
    with pytest.raises(ValueError, match="square"):
        evaluate.metrics_from_confusion(np.zeros((3, 2)))


def _png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after decoding it whole (a truncated file raises)."""
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def test_report_files(tmp_path):
    rng = np.random.default_rng(1)
    labels = {"emotion": rng.integers(0, 7, 40), "sentiment": rng.integers(0, 3, 40)}
    logits = {h: np.eye(len(evaluate.HEADS[h]))[labels[h]] * 5 for h in labels}  # perfect
    result = {"n": 40, "heads": evaluate.head_metrics(logits, labels), "per_modality": {},
              "errors": [{"id": "x", "error": "MediaError: x: bad"}]}
    assert result["heads"]["emotion"]["accuracy"] == 1.0 and result["heads"]["sentiment"]["weighted_f1"] == 1.0
    out = evaluate.write_report(result, tmp_path / "r", "t")
    sizes = {}
    for head in ("emotion", "sentiment"):
        for kind in ("", "_normalized"):
            png = out / f"confusion_{head}{kind}.png"
            sizes[head, kind] = _png_size(png)
            assert 20_000 < png.stat().st_size < 2_000_000, png
    for (head, _), (w, h) in sizes.items():  # a cell per class pair, plus axes and legend
        k = len(evaluate.HEADS[head])
        assert 60 * k < w < 2000 and 60 * k < h < 2000, (head, w, h)
    assert sizes["emotion", ""][0] > sizes["sentiment", ""][0]
    data = json.loads((out / "report.json").read_text())
    assert data["labels"]["emotion"] == list(EMOTIONS) and data["labels"]["sentiment"] == list(SENTIMENTS)
    assert data["heads"]["emotion"]["confusion"] == np.diag(np.bincount(labels["emotion"], minlength=7)).tolist()
    md = (out / "report.md").read_text()
    assert "| emotion | 1.0000 | 1.0000 |" in md and "failed to decode" in md and "confusion_sentiment.png" in md
    assert "confusion_emotion_normalized.png" in md


def test_confusion_chart_cells():
    """The chart's data: one cell per (true, predicted) pair, the count or the row share as text."""
    cm = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    counts = evaluate.confusion_chart(cm, SENTIMENTS).to_dict()
    shares = evaluate.confusion_chart(cm, SENTIMENTS, normalize=True).to_dict()
    cells = {(c["true"], c["predicted"]): c for c in counts["data"]["values"]}
    assert len(cells) == 9 and cells["negative", "negative"]["label"] == "3"
    assert cells["positive", "positive"]["count"] == 2
    norm = {(c["true"], c["predicted"]): c["label"] for c in shares["data"]["values"]}
    assert norm["negative", "negative"] == "0.75" and norm["positive", "positive"] == "0.50"
    assert norm["neutral", "neutral"] == "0.00"  # a row without clips: 0, not nan


def _feature_dir(tmp_path, model, n=24):
    """A featurized Parquet directory like featurize writes, with random embeddings."""
    import pyarrow.parquet as pq

    from mmsa_ray.train.featurize import output_table

    rng = np.random.default_rng(0)
    batch = {
        "id": np.array([f"dev/dia0_utt{i}" for i in range(n)], dtype=object),
        "split": np.array(["dev"] * n, dtype=object),
        "emotion_index": rng.integers(0, 7, n), "sentiment_index": rng.integers(0, 3, n),
        "audio": rng.standard_normal((n, 1, 64, 300)).astype(np.float32),
        "mask": np.ones((n, 3), np.float32),
        "error": np.array([None] * (n - 1) + ["MediaError: broken.mp4: no streams"], dtype=object),
    }
    batch["mask"][0, MODALITIES.index("audio")] = 0  # one clip without audio: stored as an empty list
    emb = {"video_emb": rng.standard_normal((n, 512)).astype(np.float32),
           "text_emb": rng.standard_normal((n, model.text_hidden)).astype(np.float32)}
    table = output_table(batch, emb)
    d = tmp_path / "features"
    d.mkdir()
    pq.write_table(table, d / "part-0.parquet")
    return d, table


def test_evaluate_cli_on_features(tmp_path, tiny_checkpoint, capsys):

    model = checkpoint.load(tiny_checkpoint)
    d, table = _feature_dir(tmp_path, model)
    assert table.column("audio")[0].as_py() == [] and len(table.column("audio")[1].as_py()) == 64 * 300
    data, errors = evaluate.load_features(d)
    assert len(data) == 23 and errors == [{"id": "dev/dia0_utt23", "error": "MediaError: broken.mp4: no streams"}]
    assert data.audio.shape == (23, 1, 64, 300) and not data.audio[0].any() and data.audio[1].any()
    # the CLI agrees with the library call
    expected = evaluate.evaluate(model, data)
    out = tmp_path / "report"
    argv = ["--checkpoint", str(tiny_checkpoint), "--features", str(d), "--output", str(out), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    got = json.loads((out / "report.json").read_text())
    assert got["n"] == 23 and len(got["errors"]) == 1
    for h in ("emotion", "sentiment"):
        assert got["heads"][h]["confusion"] == expected["heads"][h]["confusion"]
    assert set(got["per_modality"]) == set(MODALITIES)
    with pytest.raises(SystemExit):  # already encoded: nothing to withhold
        evaluate.main([*argv, "--without", "future"])
    with pytest.raises(SystemExit):
        evaluate.main([*argv, "--without", "faces"])
    assert "--without takes future and/or speakers, got faces" in capsys.readouterr().err
    # masking a modality out changes what the model sees
    text_only, _ = evaluate.load_features(d, modalities=("text",))
    assert text_only.mask[:, 1:].sum() == 0 and text_only.mask[:, 0].all()
