"""Labeling throughput: the Ray Data pipeline on 2 CPUs vs a plain loop on 1 CPU, one run.

    python benchmarks/label.py [--checkpoint DIR] [--clips 42] [--frames 16] [--size 112]

Both sides do the same work, in warm processes on the same clips: decode + features (Predictor.preprocess)
and the model (Predictor.predict_batch on batches of --batch-size). The baseline is a
single process with torch.set_num_threads(1); the pipeline is `mmsa_ray.batch.label.label` on a
local Ray with num_cpus=2: decode tasks plus --actors model actors, with --decode-cpus and
--cpus-per-actor splitting the 2 logical CPUs. Prints clips/s of each, the ratio (target
>= 1.6), the loop's per-stage seconds per clip, and Ray Data's per-operator stats.

--starter compares, in the same process, the plain loop with the shipped starter checkpoint
(text only: nothing decoded, no r3d_18) against the full model (all three modalities) on the
same clips and transcripts, and prints clips/s of both and their ratio.

Without --checkpoint a random-initialised model (decode --frames x --size x --size) is
saved to a temporary directory; clips are synthetic MELD-like sample clips (128x96,
15 fps, about 2-4 s, H.264 + AAC). Timings on a shared machine are noisy: compare the
ratio, and rerun the baseline beside any change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_clips(root: Path, n: int) -> list[Path]:
    from mmsa_ray.labels import EMOTIONS
    from mmsa_ray.train.sample_data import make_sample_data

    per_class = -(-n // len(EMOTIONS))
    make_sample_data(root, n_per_class_train=0, n_per_class_dev=0, n_per_class_test=per_class, seed=0)
    clips = sorted((root / "output_repeated_splits_test").glob("*.mp4"))[:n]
    for extra in sorted((root / "output_repeated_splits_test").glob("*.mp4"))[n:]:
        extra.unlink()
    return clips


def make_checkpoint(path: Path, frames: int, size: int) -> Path:
    import torch

    from mmsa_ray import checkpoint
    from mmsa_ray.media import DecodeConfig
    from mmsa_ray.model import ModelConfig, MultimodalSentimentModel

    torch.manual_seed(0)
    config = ModelConfig(decode=DecodeConfig(num_frames=frames, height=size, width=size))
    checkpoint.save(MultimodalSentimentModel(config), str(path))
    return path


def baseline(
    checkpoint: Path, clips: list[Path], batch_size: int, transcripts: list[str] | None = None
) -> dict[str, float]:
    """Single process, one torch thread: decode + features, then the model, batch by batch."""
    import torch

    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    predictor.predict_batch(collate([predictor.dummy_features()]))  # warm-up, like the actors' first call
    t_pre = t_model = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(clips), batch_size):
        a = time.perf_counter()
        feats = [predictor.preprocess(str(p), transcripts[j] if transcripts else None)
                 for j, p in enumerate(clips[i:i + batch_size], start=i)]
        b = time.perf_counter()
        predictor.predict_batch(collate(feats))
        t_pre, t_model = t_pre + b - a, t_model + time.perf_counter() - b
    total = time.perf_counter() - t0
    return {"seconds": total, "clips_per_s": len(clips) / total, "preprocess_s": t_pre, "model_s": t_model}


def steady_rate(output: Path) -> float:
    """Clips/s between the first and the last model batch, from the rows' labeled_at."""
    import pyarrow.dataset as pads

    table = pads.dataset(str(output), format="parquet").to_table(columns=["labeled_at"])
    times = table.column("labeled_at").to_pylist()
    first, last = min(times), max(times)
    after_first = sum(t > first for t in times)
    return after_first / max((last - first).total_seconds(), 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="model checkpoint (default: a random-initialised one, see --frames/--size)")
    p.add_argument("--clips", type=int, default=56, help="number of clips (default 56)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip of the generated model (default 16)")
    p.add_argument("--size", type=int, default=112, help="frame height=width of the generated model (default 112)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per model call, both sides (default 8)")
    p.add_argument("--actors", default="2,2", help="model actor pool MIN,MAX (default 2,2)")
    p.add_argument("--cpus-per-actor", type=float, default=0.5, help="logical CPUs per model actor (default 0.5)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="logical CPUs per decode task (default 0.5)")
    p.add_argument("--decode-batch-size", type=int, default=4, help="clips per decode task (default 4, as label)")
    p.add_argument("--warmup", type=int, default=4, help="clips labeled once before the timed Ray run (default 4)")
    p.add_argument("--starter", action="store_true",
                   help="compare the shipped starter checkpoint with the full model (loop only)")
    args = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="mmsa-bench-label-"))
    clips = make_clips(tmp / "data", args.clips)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        checkpoint = make_checkpoint(tmp / "checkpoint", args.frames, args.size)
    print(f"{len(clips)} clips, checkpoint {checkpoint}, batch {args.batch_size}", flush=True)

    if args.starter:
        return compare_starter(checkpoint, clips, args.batch_size)
    base = baseline(checkpoint, clips, args.batch_size)
    print(f"loop (1 CPU): {base['clips_per_s']:.2f} clips/s ({base['seconds']:.1f} s); per clip: "
          f"decode+features {base['preprocess_s'] / len(clips) * 1e3:.0f} ms, "
          f"model {base['model_s'] / len(clips) * 1e3:.0f} ms",
          flush=True)

    summary = ray_run(args, checkpoint, clips, tmp)
    assert summary.labeled == len(clips), summary
    ray_rate = len(clips) / summary.seconds
    print(summary.stats)
    print(f"ray (2 CPUs): {ray_rate:.2f} clips/s "
          f"({summary.seconds:.1f} s; listing, planning and model actor start-up included)")
    steady = steady_rate(tmp / "labels")
    print(f"ray steady state: {steady:.2f} clips/s "
          "(rows after the first model batch / time between first and last batch)")
    print(f"ratio ray / loop: {ray_rate / base['clips_per_s']:.2f} end to end, "
          f"{steady / base['clips_per_s']:.2f} steady state (target >= 1.6)")
    return 0


def ray_run(args, checkpoint: Path, clips: list[Path], tmp: Path):
    """`label` of the clips on a local Ray of 2 CPUs, after a warm-up run on a few copies;
    the timed run's LabelSummary."""
    import ray

    from mmsa_ray.batch import label

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    try:
        lo, hi = (int(x) for x in args.actors.split(","))

        def config(input_dir: Path, output: Path) -> label.LabelConfig:
            return label.LabelConfig(
                input=str(input_dir), checkpoint=str(checkpoint), output=str(output),
                actors=(lo, hi), cpus_per_actor=args.cpus_per_actor, decode_cpus=args.decode_cpus,
                batch_size=args.batch_size, decode_batch_size=args.decode_batch_size,
            )

        # Warm-up on a few other copies: worker processes import torch/PyAV/transformers once,
        # as the loop's process already has (its model load is not timed either).
        warm = tmp / "warmup"
        warm.mkdir()
        for c in clips[: args.warmup]:
            (warm / c.name).symlink_to(c)
        t = time.perf_counter()
        label.label(config(warm, tmp / "warmup_labels"))
        print(f"ray warm-up ({args.warmup} clips): {time.perf_counter() - t:.1f} s", flush=True)
        summary = label.label(config(clips[0].parent, tmp / "labels"))
    finally:
        ray.shutdown()
    return summary


def compare_starter(full: Path, clips: list[Path], batch_size: int) -> int:
    """The plain loop with the starter checkpoint vs the full model, same clips and transcripts."""
    from mmsa_ray.pretrained import default_checkpoint
    from mmsa_ray.train.meld import read_meld

    text = {Path(r.path).name: r.transcript for r in read_meld(clips[0].parent.parent, "test").records if r.path}
    transcripts = [text[c.name] for c in clips]
    rates = {}
    for name, ckpt in (("full model (text+audio+video)", full), ("starter (text only)", default_checkpoint())):
        r = baseline(ckpt, clips, batch_size, transcripts)
        rates[name] = r["clips_per_s"]
        print(f"{name}: {r['clips_per_s']:.2f} clips/s; "
              f"per clip: decode+features {r['preprocess_s'] / len(clips) * 1e3:.0f} ms, "
              f"model {r['model_s'] / len(clips) * 1e3:.0f} ms", flush=True)
    a, b = rates.values()
    print(f"ratio starter / full: {b / a:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
