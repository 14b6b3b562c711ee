"""Metrics and the evaluation report: accuracy, weighted/macro F1, per-class precision,
recall and F1, confusion matrices (counts and row-normalised PNGs), as JSON + Markdown.

Metrics come from scikit-learn (`confusion_matrix`, `classification_report`,
`f1_score`, `accuracy_score`) with `zero_division=0`:

- confusion matrix C [K, K]: C[i, j] = clips of true class i predicted as j;
- per class precision, recall, F1 and support over all K classes (0 where undefined);
- weighted F1 = sum_k support_k F1_k / sum_k support_k;
- macro F1 = mean of F1_k over the classes that occur in y_true or y_pred (sklearn's
  default label set).

Training all-reduces confusion matrices across workers rather than labels, so
`metrics_from_confusion` hands a matrix to the same sklearn calls as (true, predicted)
pairs weighted by their counts (`sample_weight`): one definition of every number.

`evaluate` runs a checkpoint over featurized clips (the Parquet that `featurize`
writes: cached encoder outputs, so evaluation is one cheap forward of the trainable
parts) and `write_report` writes ``report.json``, ``report.md``,
``confusion_<head>.png`` (counts) and ``confusion_<head>_normalized.png`` (each row
divided by its total) into a directory; the charts are Vega-Lite (altair) rendered to
PNG by vl-convert, offline. `main` is ``mmsa-ray evaluate``: it takes a checkpoint and
either a MELD split (featurized on the way, with Ray Data, reusing the feature cache)
or a featurized Parquet directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmsa_ray import checkpoint
from mmsa_ray.features import DEFAULT_MEL_SHAPE
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS, parse_modalities

HEADS: dict[str, tuple[str, ...]] = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


# ---------------------------------------------------------------------------- metrics


def _labels(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 [N] arrays, checked: same length, every label in [0, K)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):  # sklearn would drop them silently
            raise ValueError(f"{name} holds labels outside [0, {num_classes}): {sorted(set(a.tolist()))[:10]}")
    return t, p


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 [K, K], rows = true class, columns = predicted class. Labels must be in [0, K)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    t, p = _labels(y_true, y_pred, num_classes)
    return sk_confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def classification_metrics(y_true, y_pred, num_classes: int, sample_weight=None) -> dict:
    """Accuracy, per-class precision/recall/F1/support, weighted and macro F1 and the
    confusion matrix of integer labels [N] (sklearn; `sample_weight` [N] counts per pair)."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    t, p = _labels(y_true, y_pred, num_classes)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.int64).ravel()
    labels = list(range(num_classes))
    n = int(t.size if w is None else w.sum())
    if n == 0:  # nothing to score (e.g. an empty shard): sklearn would warn and return nan
        zeros = [0.0] * num_classes
        return {"n": 0, "accuracy": 0.0, "weighted_f1": 0.0, "macro_f1": 0.0, "precision": zeros, "recall": zeros,
                "f1": zeros, "support": [0] * num_classes,
                "confusion": np.zeros((num_classes, num_classes), np.int64).tolist()}
    report = classification_report(t, p, labels=labels, sample_weight=w, output_dict=True, zero_division=0)
    per_class = [report[str(k)] for k in labels]
    return {
        "n": n,
        "accuracy": float(accuracy_score(t, p, sample_weight=w)),
        "weighted_f1": float(f1_score(t, p, labels=labels, average="weighted", sample_weight=w, zero_division=0)),
        # no `labels`: sklearn averages over the classes present in y_true or y_pred
        "macro_f1": float(f1_score(t, p, average="macro", sample_weight=w, zero_division=0)),
        "precision": [float(c["precision"]) for c in per_class],
        "recall": [float(c["recall"]) for c in per_class],
        "f1": [float(c["f1-score"]) for c in per_class],
        "support": [int(round(c["support"])) for c in per_class],
        "confusion": sk_confusion_matrix(t, p, labels=labels, sample_weight=w).astype(np.int64).tolist(),
    }


def metrics_from_confusion(cm) -> dict:
    """`classification_metrics` of a confusion matrix int [K, K] (rows true, columns
    predicted): each non-zero cell (i, j) is the pair (true i, predicted j) weighted by its
    count. Zero cells are left out, so a class absent from both rows and columns stays out
    of the macro average, as it would with the raw labels."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (cm < 0).any():
        raise ValueError(f"a confusion matrix is a square array of counts >= 0, got shape {cm.shape}")
    true, pred = np.nonzero(cm)
    return classification_metrics(true, pred, cm.shape[0], sample_weight=cm[true, pred])


def head_metrics(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, dict]:
    """{"emotion": metrics, "sentiment": metrics} from logits [N, K] and integer labels [N]."""
    return {
        head: classification_metrics(labels[head], np.asarray(logits[head]).argmax(axis=1), len(names))
        for head, names in HEADS.items()
    }


# ------------------------------------------------------------------ features -> logits


@dataclass
class FeatureArrays:
    """Featurized clips as arrays (no batch split): what `predict_logits` consumes.

    video_emb float32 [N, 512], text_emb float32 [N, H], audio float32 [N, 1, 64, 300],
    mask float32 [N, 3] (rows with an error are excluded before this), emotion/sentiment int64 [N].
    """

    ids: list[str]
    video_emb: np.ndarray
    text_emb: np.ndarray
    audio: np.ndarray
    mask: np.ndarray
    emotion: np.ndarray
    sentiment: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def load_features(path: str | os.PathLike, modalities=MODALITIES,
                  mel_shape=DEFAULT_MEL_SHAPE) -> tuple[FeatureArrays, list[dict]]:
    """Read a featurized Parquet directory (featurize's output) into arrays.

    Rows with an error are left out and returned separately as [{"id", "error"}].
    Modalities not in `modalities` get a zero mask.
    """
    import pyarrow.dataset as pads

    table = pads.dataset(str(path), format="parquet").to_table()
    rows = table.to_pydict()
    errors = [{"id": i, "error": e} for i, e in zip(rows["id"], rows["error"], strict=True) if e]
    keep = [k for k, e in enumerate(rows["error"]) if not e]
    arrays = batch_from_rows({c: [rows[c][k] for k in keep] for c in rows}, modalities, mel_shape)
    return arrays, errors


def batch_from_rows(cols: dict[str, list], modalities=MODALITIES, mel_shape=DEFAULT_MEL_SHAPE) -> FeatureArrays:
    """Columns of featurized rows (lists; audio may be empty = absent) -> FeatureArrays."""
    from mmsa_ray.train.featurize import stack_audio

    n = len(cols["id"])
    mask = np.asarray(cols["mask"], dtype=np.float32).reshape(n, len(MODALITIES))
    keep = np.asarray([m in modalities for m in MODALITIES], dtype=np.float32)
    return FeatureArrays(
        ids=list(cols["id"]),
        video_emb=np.asarray(cols["video_emb"], dtype=np.float32).reshape(n, -1),
        text_emb=np.asarray(cols["text_emb"], dtype=np.float32).reshape(n, -1),
        audio=stack_audio(cols["audio"], mel_shape),
        mask=mask * keep,
        emotion=np.asarray(cols["emotion_index"], dtype=np.int64),
        sentiment=np.asarray(cols["sentiment_index"], dtype=np.int64),
    )


def predict_logits(model, data: FeatureArrays, batch_size: int = 256, device: str = "cpu") -> dict:
    """Run the model (eval mode, no grad) on cached features.

    Returns {"emotion": [N,7], "sentiment": [N,3], "per_modality": {m: {"emotion", "sentiment"}}}
    float32 numpy logits.
    """
    import torch

    model.eval()
    out: dict = {"emotion": [], "sentiment": [],
                 "per_modality": {m: {"emotion": [], "sentiment": []} for m in MODALITIES}}
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            batch = {
                "video_emb": torch.from_numpy(data.video_emb[s:s + batch_size]).to(device),
                "text_emb": torch.from_numpy(data.text_emb[s:s + batch_size]).to(device),
                "audio": torch.from_numpy(data.audio[s:s + batch_size]).to(device),
                "mask": torch.from_numpy(data.mask[s:s + batch_size]).to(device),
            }
            res = model(batch)
            for head in HEADS:
                out[head].append(res[head].float().cpu().numpy())
                for m in MODALITIES:
                    pm = res.get("per_modality", {}).get(m)
                    if pm is not None:
                        out["per_modality"][m][head].append(pm[head].float().cpu().numpy())
    cat = lambda xs, k: np.concatenate(xs) if xs else np.zeros((0, k), np.float32)  # noqa: E731
    return {
        "emotion": cat(out["emotion"], len(EMOTIONS)),
        "sentiment": cat(out["sentiment"], len(SENTIMENTS)),
        "per_modality": {
            m: {h: cat(v[h], len(HEADS[h])) for h in HEADS} for m, v in out["per_modality"].items() if v["emotion"]
        },
    }


def evaluate(model, data: FeatureArrays, batch_size: int = 256, device: str = "cpu",
             calibration: dict | None = None) -> dict:
    """Metrics of the fused prediction per head, each present modality's own head (on the
    clips that have that modality), and how well calibrated the probabilities are (raw, and
    with the checkpoint's `calibration` when it has one)."""
    from mmsa_ray.train.calibration import calibration_metrics

    logits = predict_logits(model, data, batch_size, device)
    labels = {"emotion": data.emotion, "sentiment": data.sentiment}
    result = {"n": len(data), "heads": head_metrics(logits, labels), "per_modality": {},
              "calibration": calibration_metrics(logits, labels, calibration), "calibrated": bool(calibration)}
    for m, lg in logits["per_modality"].items():
        has = data.mask[:, MODALITIES.index(m)] > 0
        if has.any():
            result["per_modality"][m] = {
                h: {k: v for k, v in classification_metrics(labels[h][has], lg[h][has].argmax(1), len(HEADS[h])).items()
                    if k in ("n", "accuracy", "weighted_f1", "macro_f1")}
                for h in HEADS
            }
    return result


# ---------------------------------------------------------------------------- report


def confusion_chart(cm, class_names, title: str = "", normalize: bool = False):
    """A confusion matrix int [K, K] (rows true, columns predicted) as an altair heatmap with
    the value in each cell: counts, or with `normalize` each row divided by its total (the
    share of a true class predicted as each class; rows with no clips stay 0)."""
    import altair as alt

    cm = np.asarray(cm, dtype=np.int64)
    names = [str(n) for n in class_names]
    totals = cm.sum(axis=1)
    cells = []
    for i, true in enumerate(names):
        for j, pred in enumerate(names):
            share = float(cm[i, j] / totals[i]) if totals[i] else 0.0
            cells.append({"true": true, "predicted": pred, "count": int(cm[i, j]), "share": share,
                          "label": f"{share:.2f}" if normalize else str(int(cm[i, j]))})
    base = alt.Chart(alt.Data(values=cells)).encode(
        x=alt.X("predicted:N", sort=names, title="predicted", axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("true:N", sort=names, title="true"),
    )
    # Colour always follows the row share, so rare classes are as readable as common ones;
    # the text says the count (or the share).
    heat = base.mark_rect(stroke="#ddd").encode(
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="share of the row"),
        tooltip=["true:N", "predicted:N", "count:Q", alt.Tooltip("share:Q", format=".2f")],
    )
    text = base.mark_text(fontSize=12).encode(
        text="label:N",
        color=alt.condition(alt.datum.share > 0.6, alt.value("white"), alt.value("black")),
    )
    cell = 44 if len(names) > 3 else 64
    return (heat + text).properties(
        title=title or ("confusion matrix, row-normalised" if normalize else "confusion matrix"),
        width=cell * len(names), height=cell * len(names),
    )


def confusion_png(cm, class_names, path: str | os.PathLike, title: str = "", normalize: bool = False) -> Path:
    """Write `confusion_chart(...)` as a PNG (vl-convert, no browser, no network); returns the path."""
    path = Path(path)
    confusion_chart(cm, class_names, title, normalize).save(str(path), format="png", scale_factor=2)
    return path


def markdown_report(result: dict, title: str = "Evaluation") -> str:
    """The report as Markdown: summary table, per-class tables, per-modality table, errors."""
    lines = [f"# {title}", ""]
    for k in ("checkpoint", "data", "modalities"):
        if k in result:
            lines.append(f"- {k}: `{result[k]}`")
    if result.get("withheld"):
        lines.append(f"- context withheld: {', '.join(result['withheld'])}")
    failed = f" ({len(result.get('errors', []))} failed to decode, excluded)" if result.get("errors") else ""
    lines.append(f"- clips evaluated: {result['n']}" + failed)
    lines += ["", "| head | accuracy | weighted F1 | macro F1 |", "| --- | --- | --- | --- |"]
    for head, m in result["heads"].items():
        lines.append(f"| {head} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['macro_f1']:.4f} |")
    for head, m in result["heads"].items():
        names = HEADS[head]
        lines += ["", f"## {head}", "", f"![confusion matrix](confusion_{head}.png)",
                  f"![confusion matrix, row-normalised](confusion_{head}_normalized.png)", "",
                  "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        for c, name in enumerate(names):
            lines.append(f"| {name} | {m['precision'][c]:.4f} | {m['recall'][c]:.4f} | {m['f1'][c]:.4f} "
                         f"| {m['support'][c]} |")
        lines += ["", "confusion (rows true, columns predicted):", "", "| | " + " | ".join(names) + " |",
                  "| --- " * (len(names) + 1) + "|"]
        for c, name in enumerate(names):
            lines.append(f"| **{name}** | " + " | ".join(str(v) for v in m["confusion"][c]) + " |")
    if result.get("per_modality"):
        lines += ["", "## each modality's own head (clips that have it)", "",
                  "| modality | n | emotion acc | emotion wF1 | sentiment acc | sentiment wF1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for mod, m in result["per_modality"].items():
            e, s = m["emotion"], m["sentiment"]
            lines.append(f"| {mod} | {e['n']} | {e['accuracy']:.4f} | {e['weighted_f1']:.4f} "
                         f"| {s['accuracy']:.4f} | {s['weighted_f1']:.4f} |")
    if result.get("calibration"):
        from mmsa_ray.train.calibration import calibration_markdown

        lines += calibration_markdown(result["calibration"], result.get("calibrated", False))
    if result.get("errors"):
        lines += ["", f"## clips that failed ({len(result['errors'])})", ""]
        lines += [f"- `{e['id']}`: {e['error']}" for e in result["errors"][:50]]
        if len(result["errors"]) > 50:
            lines.append(f"- ... {len(result['errors']) - 50} more in report.json")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | os.PathLike, title: str = "Evaluation") -> Path:
    """Write report.json, report.md, confusion_<head>.png (counts) and
    confusion_<head>_normalized.png (row shares) into out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for head, m in result["heads"].items():
        confusion_png(m["confusion"], HEADS[head], out / f"confusion_{head}.png", f"{title}: {head}")
        confusion_png(m["confusion"], HEADS[head], out / f"confusion_{head}_normalized.png",
                      f"{title}: {head}, row-normalised", normalize=True)
    if result.get("calibration"):
        from mmsa_ray.train.calibration import reliability_png

        for head, m in result["calibration"].items():
            reliability_png(m["reliability"], out / f"reliability_{head}.png", f"{title}: {head}, reliability")
    result = {**result, "labels": {h: list(v) for h, v in HEADS.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(markdown_report(result, title))
    return out


def summary_line(result: dict) -> str:
    """One line: accuracy and weighted F1 of both heads."""
    return " ".join(
        f"{h}: acc {m['accuracy']:.4f} wF1 {m['weighted_f1']:.4f} mF1 {m['macro_f1']:.4f};"
        for h, m in result["heads"].items()
    ) + f" n={result['n']}"


# ------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """`mmsa-ray evaluate`'s flags."""

    p = argparse.ArgumentParser(prog="mmsa-ray evaluate",
                                description="Metrics, confusion matrices and a JSON + Markdown report "
                                            "for a checkpoint.")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory (model.save format: config.json + model.safetensors)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--features",
                     help="a featurized Parquet directory (output of `mmsa-ray featurize`) to evaluate on")
    src.add_argument("--meld-dir", default=None,
                     help="MELD root (default $MELD_DIR) whose --split is featurized (cached) and evaluated")
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"],
                   help="MELD split with --meld-dir (default dev)")
    p.add_argument("--modalities", default=",".join(MODALITIES),
                   help="modalities to use, comma separated (others masked out); default all")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N records of the split (with --meld-dir)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root (with --meld-dir; default <storage>/features, see featurize)")
    p.add_argument("--without", default="",
                   help="context to withhold, comma separated: 'future' (the later turns: as Serve reads a clip "
                        "sent without them) and/or 'speakers' (the [same]/[other] markers: as label reads rows with "
                        "speakers off); default none: the rows as the checkpoint was trained to read them")
    p.add_argument("--batch-size", type=int, default=256, help="clips per forward pass (default 256)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    p.add_argument("--output", required=True,
                   help="directory for report.json, report.md and the confusion_<head>[_normalized].png charts")
    return p


def load_split(p: argparse.ArgumentParser, args: argparse.Namespace,
               model) -> tuple[FeatureArrays, list, str, tuple[str, ...]]:
    """The features `args` name for `model`: a featurized Parquet directory (--features), or
    the MELD --split featurized on the way (Ray Data, reusing the cache). Returns the arrays,
    the clips that failed to decode, where the features are, and the modalities used: those
    of --modalities that the checkpoint reads."""
    from mmsa_ray import console
    from mmsa_ray.train.meld import check_meld_root, default_meld_dir

    modalities = tuple(m for m in parse_modalities(args.modalities) if m in model.config.modalities)
    if not modalities:
        p.error(f"--modalities {args.modalities}: the checkpoint reads only {','.join(model.config.modalities)}")
    if args.features:
        path = args.features
    else:
        meld_dir = args.meld_dir or default_meld_dir()
        if not meld_dir:
            p.error("give --features or --meld-dir (or set $MELD_DIR)")
        try:
            check_meld_root(meld_dir, (args.split,))
        except FileNotFoundError as e:
            p.error(f"--meld-dir: {e}")
        import ray

        from mmsa_ray.train import featurize

        started = console.init_ray()  # a reused cache needs no Ray, but starting it is quick next to featurizing
        try:
            path = featurize.featurize_meld(meld_dir, args.split, model, modalities=modalities,
                                            cache_dir=args.cache_dir, limit=args.limit).path
        finally:
            if started:
                ray.shutdown()
    data, errors = load_features(path, modalities, mel_shape=model.config.features.mel_shape)
    return data, errors, str(path), modalities


WITHHELD = {"future": {"future_turns": 0}, "speakers": {"context_speakers": False}}


def _withhold(p: argparse.ArgumentParser, model, names: str) -> list[str]:
    """--without: the model's feature config with those parts of the context off (the
    weights are untouched); the names withheld."""
    import dataclasses

    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(picked) - set(WITHHELD))
    if unknown:
        p.error(f"--without takes {' and/or '.join(WITHHELD)}, got {', '.join(unknown)}")
    for name in picked:
        model.config.features = dataclasses.replace(model.config.features, **WITHHELD[name])
    return picked


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import console

    p = build_parser()
    args = console.parse_args(p, argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = checkpoint.load(args.checkpoint, map_location=device).to(device)
    withheld = _withhold(p, model, args.without)
    if withheld and args.features:
        p.error("--without needs --meld-dir: the rows of --features were encoded with their context already")
    t0 = time.time()
    data, errors, source, modalities = load_split(p, args, model)
    result = evaluate(model, data, args.batch_size, device, checkpoint.read_calibration(args.checkpoint))
    result.update(checkpoint=str(Path(args.checkpoint).absolute()), data=source, modalities=",".join(modalities),
                  errors=errors, withheld=withheld)
    out = write_report(result, args.output, f"Evaluation on {Path(source).name}")
    print(summary_line(result))
    print(f"report: {out / 'report.md'} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
