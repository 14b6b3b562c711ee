"""`mmsa-ray demo [DIR]`: the whole system on one machine, on the embedded defaults.

sample data (synthetic MELD layout) -> `train` (featurize with the frozen encoders, then
Ray Train on cached features) -> `label` (the Ray Data pipeline over the held-out test
clips, into Parquet) -> a summary and one labeled row. Local Ray, local files, offline
models: it is the README's first command and needs no GPU and no network.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmsa-ray demo", description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default="runs/demo", help="working directory for data, checkpoint and labels (default runs/demo)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    p.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (default 2: data-parallel on CPU)")
    args = p.parse_args(argv)

    from mmsa_ray import label, sample_data, train

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
    test_clips = data / "output_repeated_splits_test"
    print(f"== 3/3 label {test_clips} (Ray Data) -> {labels}", flush=True)
    rc = label.main([str(test_clips), "--checkpoint", str(checkpoint), "--output", str(labels)])
    if rc:
        return rc
    import pyarrow.dataset as pads

    table = pads.dataset(str(labels), format="parquet").to_table()
    row = table.slice(0, 1).to_pylist()[0]
    print(f"\n{table.num_rows} labeled rows in {labels}; the first one:")
    print(json.dumps(row, indent=2, default=str, ensure_ascii=False))
    return 0
