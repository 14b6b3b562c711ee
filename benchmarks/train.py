"""Per-epoch training time: cached features vs end-to-end (frozen encoders), in one run.

    .venv/bin/python benchmarks/train.py [--data DIR] [--epochs 3] [--num-frames 16 --size 112]

Writes (or reuses) the synthetic sample data, featurizes it once (not timed in the
per-epoch numbers; printed separately), then trains the same model twice with the same
seed: from the cached Parquet features, and end-to-end (decode + features + frozen
trunks every epoch). Prints the mean epoch time of each (epoch 1 excluded when there
are more than 2: it includes worker and pipeline start-up) and the ratio (target >= 20x
at the default model size, where r3d_18 on 16x112x112 dominates end-to-end epochs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="sample data dir (made if absent; default a temp dir)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per mode (default 3)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (default 1)")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip (default 16, the model default)")
    p.add_argument("--size", type=int, default=112, help="frame size (default 112, the model default)")
    p.add_argument("--per-class", type=int, default=12, help="train clips per emotion (default 12)")
    args = p.parse_args(argv)

    import ray

    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.media import DecodeConfig
    from mmsa_ray.model import ModelConfig
    from mmsa_ray.train import driver as train
    from mmsa_ray.train import sample_data

    work = Path(tempfile.mkdtemp(prefix="mmsa_bench_train_"))
    data = Path(args.data) if args.data else work / "MELD.Raw"
    if not (data / "train_sent_emo.csv").is_file():
        sample_data.make_sample_data(data, n_per_class_train=args.per_class,
                                     n_per_class_dev=max(1, args.per_class // 2), n_per_class_test=1)
    config = ModelConfig(decode=DecodeConfig(num_frames=args.num_frames, height=args.size, width=args.size),
                         features=FeatureConfig())
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=1024**3)
    try:
        times = {}
        for mode in ("cached", "end-to-end"):
            job = train.JobConfig(meld_dir=str(data), output=str(work / mode / "model"),
                                  storage_path=str(work / "store"), name=mode, num_workers=args.num_workers,
                                  cache_dir=str(work / "cache"))
            cfg = train.TrainConfig(epochs=args.epochs, batch_size=8, patience=0, seed=0,
                                    end_to_end=mode == "end-to-end", shuffle_buffer=0, deterministic=True)
            t0 = time.time()
            res = train.run(job, cfg, config)
            hist = res["history"]
            epochs = [h["epoch_time_s"] for h in hist]
            steady = epochs[1:] if len(epochs) > 2 else epochs
            times[mode] = sum(steady) / len(steady)
            print(f"{mode}: epochs {[round(e, 2) for e in epochs]} s; mean {times[mode]:.2f} s/epoch; "
                  f"featurize {res['info'].get('featurize_s', {})}; whole run {time.time() - t0:.1f} s; "
                  f"dev emotion acc {res['report']['heads']['emotion']['accuracy']:.3f}", flush=True)
        print(f"end-to-end / cached per-epoch time: {times['end-to-end'] / times['cached']:.1f}x "
              f"(frames {args.num_frames}x{args.size}x{args.size}, {args.num_workers} worker(s))")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
