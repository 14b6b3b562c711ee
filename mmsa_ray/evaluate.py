"""Metrics and the evaluation report: accuracy, weighted/macro F1, per-class precision,
recall and F1, confusion matrices (PNG), as JSON + Markdown.

Metrics are plain numpy (no sklearn), defined as sklearn defines them:

- confusion matrix C [K, K]: C[i, j] = clips of true class i predicted as j;
- precision_k = C[k,k] / sum_i C[i,k], recall_k = C[k,k] / sum_j C[k,j],
  F1_k = 2 P R / (P + R); 0 where a denominator is 0 (sklearn's zero_division=0);
- weighted F1 = sum_k support_k F1_k / sum_k support_k (support = true count);
- macro F1 = mean of F1_k over the classes that occur in y_true or y_pred.

`evaluate` runs a checkpoint over featurized clips (the Parquet that `featurize`
writes: cached encoder outputs, so evaluation is one cheap forward of the trainable
parts) and `write_report` writes ``report.json``, ``report.md`` and
``confusion_<head>.png`` into a directory. `main` is ``mmsa-ray evaluate``: it takes a
checkpoint and either a MELD split (featurized on the way, with Ray Data, reusing the
feature cache) or a featurized Parquet directory.
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

from mmsa_ray.features import DEFAULT_MEL_SHAPE
from mmsa_ray.labels import EMOTIONS, MODALITIES, SENTIMENTS, parse_modalities

HEADS: dict[str, tuple[str, ...]] = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


# ---------------------------------------------------------------------------- metrics


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 [K, K], rows = true class, columns = predicted class. Labels must be in [0, K)."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels, y_pred {p.size}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds labels outside [0, {num_classes}): {sorted(set(a.tolist()))[:10]}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support, weighted and macro F1 of a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    total = cm.sum()
    present = (support + predicted) > 0
    return {
        "n": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "confusion": cm.tolist(),
    }


def classification_metrics(y_true, y_pred, num_classes: int) -> dict:
    """`metrics_from_confusion(confusion_matrix(...))`."""
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, num_classes))


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


def load_features(path: str | os.PathLike, modalities=MODALITIES, mel_shape=DEFAULT_MEL_SHAPE) -> tuple[FeatureArrays, list[dict]]:
    """Read a featurized Parquet directory (featurize's output) into arrays.

    Rows with an error are left out and returned separately as [{"id", "error"}].
    Modalities not in `modalities` get a zero mask.
    """
    import pyarrow.dataset as pads

    table = pads.dataset(str(path), format="parquet").to_table()
    rows = table.to_pydict()
    errors = [{"id": i, "error": e} for i, e in zip(rows["id"], rows["error"]) if e]
    keep = [k for k, e in enumerate(rows["error"]) if not e]
    arrays = batch_from_rows({c: [rows[c][k] for k in keep] for c in rows}, modalities, mel_shape)
    return arrays, errors


def batch_from_rows(cols: dict[str, list], modalities=MODALITIES, mel_shape=DEFAULT_MEL_SHAPE) -> FeatureArrays:
    """Columns of featurized rows (lists; audio may be empty = absent) -> FeatureArrays."""
    from mmsa_ray.featurize import stack_audio

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
    out: dict = {"emotion": [], "sentiment": [], "per_modality": {m: {"emotion": [], "sentiment": []} for m in MODALITIES}}
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


def evaluate(model, data: FeatureArrays, batch_size: int = 256, device: str = "cpu") -> dict:
    """Metrics of the fused prediction per head, plus each present modality's own head
    (on the clips that have that modality)."""
    logits = predict_logits(model, data, batch_size, device)
    labels = {"emotion": data.emotion, "sentiment": data.sentiment}
    result = {"n": len(data), "heads": head_metrics(logits, labels), "per_modality": {}}
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


def confusion_png(cm, class_names, path: str | os.PathLike, title: str = "") -> Path:
    """Write a confusion matrix as a PNG heatmap with counts (PIL; rows true, columns predicted).

    Cell shade = count / row total (recall per cell), so rare classes are readable.
    """
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    cell, left, top = 56, 96, 40 + 80
    w, h = left + k * cell + 16, top + k * cell + 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((8, 8), title or "confusion matrix", fill="black", font=font)
    d.text((left, 24), "predicted ->", fill="black", font=font)
    row_tot = cm.sum(axis=1, keepdims=True)
    frac = _div(cm, np.broadcast_to(row_tot, cm.shape))
    for j, name in enumerate(class_names):  # column labels, written vertically-ish (truncated)
        d.text((left + j * cell + 4, 44 + (j % 2) * 14), name[:8], fill="black", font=font)
    for i, name in enumerate(class_names):
        d.text((4, top + i * cell + cell // 2 - 6), name[:12], fill="black", font=font)
        for j in range(k):
            v = float(frac[i, j])
            shade = int(255 * (1 - 0.85 * v))
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            d.text((x0 + 6, y0 + cell // 2 - 6), str(int(cm[i, j])), fill="white" if v > 0.6 else "black", font=font)
    d.text((4, h - 24), "rows: true class; shade: share of the row", fill="black", font=font)
    path = Path(path)
    img.save(path, format="PNG")
    return path


def markdown_report(result: dict, title: str = "Evaluation") -> str:
    """The report as Markdown: summary table, per-class tables, per-modality table, errors."""
    lines = [f"# {title}", ""]
    for k in ("checkpoint", "data", "modalities"):
        if k in result:
            lines.append(f"- {k}: `{result[k]}`")
    lines.append(f"- clips evaluated: {result['n']}" + (f" ({len(result.get('errors', []))} failed to decode, excluded)" if result.get("errors") else ""))
    lines += ["", "| head | accuracy | weighted F1 | macro F1 |", "| --- | --- | --- | --- |"]
    for head, m in result["heads"].items():
        lines.append(f"| {head} | {m['accuracy']:.4f} | {m['weighted_f1']:.4f} | {m['macro_f1']:.4f} |")
    for head, m in result["heads"].items():
        names = HEADS[head]
        lines += ["", f"## {head}", "", f"![confusion matrix](confusion_{head}.png)", "",
                  "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        for c, name in enumerate(names):
            lines.append(f"| {name} | {m['precision'][c]:.4f} | {m['recall'][c]:.4f} | {m['f1'][c]:.4f} | {m['support'][c]} |")
        lines += ["", "confusion (rows true, columns predicted):", "", "| | " + " | ".join(names) + " |",
                  "| --- " * (len(names) + 1) + "|"]
        for c, name in enumerate(names):
            lines.append(f"| **{name}** | " + " | ".join(str(v) for v in m["confusion"][c]) + " |")
    if result.get("per_modality"):
        lines += ["", "## each modality's own head (clips that have it)", "",
                  "| modality | n | emotion acc | emotion wF1 | sentiment acc | sentiment wF1 |", "| --- | --- | --- | --- | --- | --- |"]
        for mod, m in result["per_modality"].items():
            e, s = m["emotion"], m["sentiment"]
            lines.append(f"| {mod} | {e['n']} | {e['accuracy']:.4f} | {e['weighted_f1']:.4f} | {s['accuracy']:.4f} | {s['weighted_f1']:.4f} |")
    if result.get("errors"):
        lines += ["", f"## clips that failed ({len(result['errors'])})", ""]
        lines += [f"- `{e['id']}`: {e['error']}" for e in result["errors"][:50]]
        if len(result["errors"]) > 50:
            lines.append(f"- ... {len(result['errors']) - 50} more in report.json")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | os.PathLike, title: str = "Evaluation") -> Path:
    """Write report.json, report.md and confusion_<head>.png into out_dir; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for head, m in result["heads"].items():
        confusion_png(m["confusion"], HEADS[head], out / f"confusion_{head}.png", f"{title}: {head}")
    result = {**result, "labels": {h: list(v) for h, v in HEADS.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    (out / "report.md").write_text(markdown_report(result, title))
    return out


def summary_line(result: dict) -> str:
    """One line: accuracy and weighted F1 of both heads."""
    return " ".join(
        f"{h}: acc {m['accuracy']:.4f} wF1 {m['weighted_f1']:.4f} mF1 {m['macro_f1']:.4f};" for h, m in result["heads"].items()
    ) + f" n={result['n']}"


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmsa-ray evaluate", description="Metrics, confusion matrices and a JSON + Markdown report for a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (model.save format: config.json + model.safetensors)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--features", help="a featurized Parquet directory (output of `mmsa-ray featurize`) to evaluate on")
    src.add_argument("--meld-dir", default=None, help="MELD root (default $MELD_DIR) whose --split is featurized (cached) and evaluated")
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"], help="MELD split with --meld-dir (default dev)")
    p.add_argument("--modalities", default=",".join(MODALITIES), help="modalities to use, comma separated (others masked out); default all")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N records of the split (with --meld-dir)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (with --meld-dir; default <storage>/features, see featurize)")
    p.add_argument("--batch-size", type=int, default=256, help="clips per forward pass (default 256)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    p.add_argument("--output", required=True, help="directory for report.json, report.md and confusion_<head>.png")
    args = p.parse_args(argv)

    import torch

    from mmsa_ray.meld import check_meld_root, default_meld_dir
    from mmsa_ray.model import MultimodalSentimentModel

    meld_dir = None
    if not args.features:
        meld_dir = args.meld_dir or default_meld_dir()
        if not meld_dir:
            p.error("give --features or --meld-dir (or set $MELD_DIR)")
        try:  # before the model loads
            check_meld_root(meld_dir, (args.split,))
        except FileNotFoundError as e:
            p.error(f"--meld-dir: {e}")
    modalities = parse_modalities(args.modalities)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MultimodalSentimentModel.load(args.checkpoint, map_location=device).to(device)
    t0 = time.time()
    if args.features:
        data_path, errors_src = args.features, args.features
    else:
        from mmsa_ray import featurize

        res = featurize.featurize_meld(
            meld_dir, args.split, model, modalities=modalities, cache_dir=args.cache_dir, limit=args.limit,
        )
        data_path, errors_src = res.path, res.path
    data, errors = load_features(data_path, modalities, mel_shape=model.config.features.mel_shape)
    result = evaluate(model, data, args.batch_size, device)
    result.update(checkpoint=str(Path(args.checkpoint).absolute()), data=str(errors_src), modalities=",".join(modalities), errors=errors)
    out = write_report(result, args.output, f"Evaluation on {Path(str(errors_src)).name}")
    print(summary_line(result))
    print(f"report: {out / 'report.md'} ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
