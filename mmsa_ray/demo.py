"""`mmsa-ray demo [DIR]`: the whole system on one machine, on the embedded defaults.

sample data (synthetic MELD layout) -> `train` (featurize with the frozen encoders, then
Ray Train on cached features) -> `label` (the Ray Data pipeline over a manifest of the
held-out test clips and their transcripts, into Parquet) -> a summary, the agreement with
the annotations and one labeled row. Local Ray, local files, offline
models: it is the README's first command and needs no GPU and no network.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmsa-ray demo", description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="runs/demo", help="working directory for data, checkpoint and labels (default runs/demo)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2: data-parallel on CPU)")
    args = p.parse_args(argv)

    from mmsa_ray import label, sample_data, train
    from mmsa_ray.meld import read_meld, write_manifest

    root = Path(args.dir).absolute()
    data, checkpoint, labels = root / "MELD.Raw", root / "checkpoint", root / "labels"
    if not (data / sample_data.MARKER).is_file():
        print(f"== 1/3 synthetic MELD-layout data -> {data}", flush=True)
        sample_data.main([str(data)])
    print(f"== 2/3 train (Ray Train, {args.num_workers} workers) -> {checkpoint}", flush=True)
    rc = train.main([
        "--meld-dir", str(data), "--output", str(checkpoint), "--storage-path", str(root / "ray_results"),
        "--num-workers", str(args.num_workers), "--epochs", str(args.epochs),
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
    rc = label.main([str(manifest), "--checkpoint", str(checkpoint), "--output", str(labels)])
    if rc:
        return rc
    import pyarrow.dataset as pads

    rows = pads.dataset(str(labels), format="parquet").to_table().to_pylist()
    truth = {r.id: r.emotion for r in test.records}
    agree = sum(r["emotion"] == truth.get(r["id"]) for r in rows)
    print(f"\n{len(rows)} labeled rows in {labels}; emotion agrees with the annotation on {agree}/{len(rows)}. The first row:")
    print(json.dumps(rows[0], indent=2, default=str, ensure_ascii=False))
    return 0
