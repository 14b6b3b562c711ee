"""Serve latency and throughput against in-process prediction of the same clip, in one run.

    python benchmarks/serve.py [--checkpoint DIR] [--clip FILE] [--requests 12] [--clients 1 8]

Measures, on loopback only:
  in-process   Predictor.preprocess + predict_batch of the clip's bytes (the baseline)
  serve        the HTTP endpoint, dynamic batching off (max_batch_size=1) and on, at
               1 and 8 concurrent clients: p50/p95 latency and requests/s

and prints the ratios the serve issue targets: p50 at 1 client / in-process time
(target <= 1.25) and batched / unbatched requests/s at 8 clients (>= 1.5 where the
model step dominates, on a GPU; >= 1.0 on a CPU machine). Without --checkpoint a
random-initialised model is saved to a temporary directory; without --clip a 3.6 s
640x360 H.264/AAC clip (MELD's mean length) is generated with PyAV.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import socket
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_clip(path: Path, seconds: float = 3.6, width: int = 640, height: int = 360, fps: int = 25) -> Path:
    """A moving gradient with a 440 Hz tone: H.264 + AAC in MP4."""
    import av

    sample_rate = 16000
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        yy, xx = np.mgrid[0:height, 0:width]
        n_frames = int(seconds * fps)
        for i in range(n_frames):
            rgb = np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (8 * i) % 256)], axis=-1).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        t = np.arange(int(seconds * sample_rate)) / sample_rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        chunk = 1024
        for start in range(0, len(tone), chunk):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + chunk], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def random_checkpoint(path: Path) -> Path:
    import torch

    from mmsa_ray.model import ModelConfig, MultimodalSentimentModel

    torch.manual_seed(0)
    MultimodalSentimentModel(ModelConfig()).save(str(path))
    return path


def in_process_seconds(checkpoint: str, data: bytes, transcript: str, repeats: int) -> float:
    """Median wall time of preprocess + predict_batch for one clip, after one warm-up."""
    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        predictor.predict_batch(collate([predictor.preprocess(data, transcript=transcript)]))
        if i:  # the first call warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load(url: str, data: bytes, transcript: str, clients: int, requests_per_client: int) -> dict[str, float]:
    """`clients` threads each POST the clip `requests_per_client` times, back to back."""
    import requests

    def client(_: int) -> list[float]:
        latencies = []
        with requests.Session() as session:
            for _ in range(requests_per_client):
                t0 = time.perf_counter()
                r = session.post(url, files={"file": ("clip.mp4", data, "video/mp4")}, data={"transcript": transcript}, timeout=600)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        return latencies

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        latencies = [x for lat in pool.map(client, range(clients)) for x in lat]
    wall = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95])
    return {"p50": float(q[0]), "p95": float(q[1]), "rps": len(latencies) / wall, "n": len(latencies)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint directory (default: a random-initialised model)")
    parser.add_argument("--clip", help="media file to POST (default: a generated 3.6 s 640x360 clip)")
    parser.add_argument("--transcript", default="I can't believe you did that, it's wonderful!")
    parser.add_argument("--requests", type=int, default=12, help="requests per measurement (split across clients)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent client counts")
    parser.add_argument("--max-batch-size", type=int, default=8, help="batch size of the batching run")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.02)
    parser.add_argument("--num-gpus", type=float, default=None, help="GPUs per model replica (default: 1 if CUDA is available)")
    args = parser.parse_args()

    import ray
    import torch
    from ray import serve

    from mmsa_ray.serve import ServeConfig, build_app, http_options

    tmp = Path(tempfile.mkdtemp(prefix="mmsa-bench-serve-"))
    checkpoint = args.checkpoint or str(random_checkpoint(tmp / "checkpoint"))
    clip = Path(args.clip) if args.clip else make_clip(tmp / "clip.mp4")
    data = clip.read_bytes()
    threads = torch.get_num_threads()

    baseline = in_process_seconds(checkpoint, data, args.transcript, repeats=5)
    print(f"clip {clip.name}: {len(data) / 1024:.0f} KiB; torch threads {threads}; device "
          f"{'cuda' if (args.num_gpus or (args.num_gpus is None and torch.cuda.is_available())) else 'cpu'}")
    print(f"in-process preprocess + predict: {baseline * 1000:.1f} ms")

    ray.init(include_dashboard=False, log_to_driver=False)
    port = free_port()
    results: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for label, batch_size in (("unbatched", 1), ("batched", args.max_batch_size)):
            config = ServeConfig(
                checkpoint=checkpoint,
                port=port,
                num_gpus=args.num_gpus,
                model_threads=threads,  # the in-process baseline's thread count
                max_batch_size=batch_size,
                batch_wait_timeout_s=args.batch_wait_timeout_s,
                max_ongoing_requests=max(2 * batch_size, max(args.clients)),
                max_queued_requests=4 * max(args.clients),
            )
            serve.start(http_options=http_options(config))
            serve.run(build_app(config), name="bench", route_prefix="/")
            url = f"http://127.0.0.1:{port}/v1/predict"
            load(url, data, args.transcript, clients=1, requests_per_client=2)  # warm-up
            for clients in args.clients:
                per_client = max(1, args.requests // clients)
                results[(label, clients)] = load(url, data, args.transcript, clients, per_client)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{'mode':<10} {'clients':>7} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>7} {'p50/in-proc':>12}")
    for (label, clients), r in results.items():
        print(f"{label:<10} {clients:>7} {r['n']:>4} {r['p50'] * 1000:>9.1f} {r['p95'] * 1000:>9.1f} {r['rps']:>7.2f} {r['p50'] / baseline:>12.2f}")
    lo, hi = min(args.clients), max(args.clients)
    print(f"\np50 at {lo} client / in-process: unbatched {results[('unbatched', lo)]['p50'] / baseline:.2f}, "
          f"batched {results[('batched', lo)]['p50'] / baseline:.2f}  (target <= 1.25)")
    print(f"req/s at {hi} clients, batched / unbatched: {results[('batched', hi)]['rps'] / results[('unbatched', hi)]['rps']:.2f}  "
          f"(target >= 1.5 on GPU, >= 1.0 on CPU)")


if __name__ == "__main__":
    main()
