"""`mmsa-ray demo [DIR]`: the whole system on one machine, on the embedded defaults.

sample data (synthetic MELD layout) -> `train` (featurize with the frozen encoders, then
Ray Train on cached features) -> `label` (the Ray Data pipeline over a manifest of the
held-out test clips and their transcripts, into Parquet) -> the agreement with the
annotations, one labeled row, and where to look next (the report and the serve command).
Local Ray (started once for both stages), local files, offline models: it is the README's
first command and needs no GPU and no network. Its output fits on one screen; --verbose
shows everything Ray logs.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mmsa_ray import console

    p = argparse.ArgumentParser(prog="mmsa-ray demo", description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="runs/demo",
                   help="working directory for data, checkpoint and labels (default runs/demo)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2: data-parallel on CPU)")
    args = console.parse_args(p, argv)
    verbose = ["--verbose"] if args.verbose else []

    from mmsa_ray.batch import label
    from mmsa_ray.train import driver as train
    from mmsa_ray.train import sample_data
    from mmsa_ray.train.meld import read_meld, write_manifest

    root = Path(args.dir).absolute()
    data, checkpoint, labels = root / "MELD.Raw", root / "checkpoint", root / "labels"
    if not (data / sample_data.MARKER).is_file():
        print(f"== 1/3 synthetic MELD-layout data -> {data}", flush=True)
        sample_data.main([str(data)])
    import ray

    started = console.init_ray()  # one local Ray for both stages
    try:
        print(f"== 2/3 train (Ray Train, {args.num_workers} workers) -> {checkpoint}", flush=True)
        rc = train.main([
            "--meld-dir", str(data), "--output", str(checkpoint), "--storage-path", str(root / "ray_results"),
            "--num-workers", str(args.num_workers), "--epochs", str(args.epochs), *verbose,
        ])
        if rc:
            return rc
        # The held-out split as a manifest (path, id, transcript), as a team would label an
        # archive whose transcripts they have.
        test = read_meld(data, "test")
        manifest = write_manifest(test.records, root / "test_manifest.csv")
        print(f"== 3/3 label {manifest} (Ray Data) -> {labels}", flush=True)
        if (labels / label.CHECKPOINT_DIR).is_dir():  # an earlier demo's labels: the model was just retrained
            shutil.rmtree(labels)
        rc = label.main([str(manifest), "--checkpoint", str(checkpoint), "--output", str(labels), *verbose])
        if rc:
            return rc
    finally:
        if started:
            ray.shutdown()
    import pyarrow.dataset as pads

    rows = pads.dataset(str(labels), format="parquet").to_table().to_pylist()
    truth = {r.id: r.emotion for r in test.records}
    agree = sum(r["emotion"] == truth.get(r["id"]) for r in rows)
    print(f"\n{len(rows)} labeled rows in {labels}; emotion agrees with the annotation on {agree}/{len(rows)}.")
    if rows:
        print("one row: " + row_line(rows[0]))
    print("\n" + where_to_look(root, labels, checkpoint))
    return 0


def row_line(row: dict) -> str:
    """A labeled row in one line: id, transcript, the labels with their probabilities, each modality's emotion."""
    from mmsa_ray.labels import EMOTIONS, SENTIMENTS

    if row.get("error"):
        return f"{row['id']}: error: {row['error']}"
    emo = row["emotion_probs"][EMOTIONS.index(row["emotion"])]
    sen = row["sentiment_probs"][SENTIMENTS.index(row["sentiment"])]
    own = ", ".join(f"{m} {row[f'{m}_emotion']}" for m in ("text", "audio", "video") if row.get(f"{m}_emotion"))
    said = f' "{row["transcript"]}"' if row.get("transcript") else ""
    return f"{row['id']}{said} -> {row['emotion']} {emo:.2f} · {row['sentiment']} {sen:.2f} (each modality: {own})"


def where_to_look(root: Path, labels: Path, checkpoint: Path) -> str:
    """The demo's last lines: the report (made here), the dev evaluation, and how to serve
    the model just trained."""
    from mmsa_ray.report import html as report

    report_dir = root / "report"
    command = f"mmsa-ray report {labels} --output {report_dir}"
    report.main([str(labels), "--output", str(report_dir)])
    lines = ["where to look:", f"  report     {report_dir / 'index.html'}  (open it in a browser; made by: {command})"]
    lines.append(f"  evaluation {checkpoint.parent / (checkpoint.name + '_report')}/report.md"
                 "  (dev metrics, confusion matrices)")
    lines.append(f"  serve      mmsa-ray serve --checkpoint {checkpoint}"
                 "  (then POST a clip to http://127.0.0.1:8000/v1/predict)")
    return "\n".join(lines)
