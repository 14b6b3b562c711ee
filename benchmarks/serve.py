"""Serve latency and throughput against in-process prediction of the same clip, in one run.

    python benchmarks/serve.py [--checkpoint DIR] [--clip FILE] [--requests 12] [--clients 1 8]
    python benchmarks/serve.py --section speech [--requests 8] [--overload-s 20]

--section speech: uploads *without* a transcript (the Serve page's main use), 5 s and 30 s
espeak-ng talks in mp4, on the app exactly as `mmsa-ray serve` plans it on this machine (the
shipped starter, every deployment on the cluster's share of CPUs): p50/p95 latency at 1 and
8 clients beside the same work in this process (transcribe, then each utterance's window
with its transcript and context through Preprocessing and the model; target: p50 at 1
client <= 1.2x in-process), then an open-loop load at 2x the rate it sustained with 8
clients: the share of 503s, how fast they came, and one upload right after.

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
            rgb = np.stack(
                [(xx + 4 * i) % 256, (yy + 2 * i) % 256, np.full_like(xx, (8 * i) % 256)], axis=-1
            ).astype(np.uint8)
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

    from mmsa_ray import checkpoint
    from mmsa_ray.model import ModelConfig, MultimodalSentimentModel

    torch.manual_seed(0)
    checkpoint.save(MultimodalSentimentModel(ModelConfig()), str(path))
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


def load(url: str, data: bytes, transcript: str | None, clients: int, requests_per_client: int) -> dict[str, float]:
    """`clients` threads each POST the clip `requests_per_client` times, back to back
    (transcript None: without one, so the upload is transcribed)."""
    import requests

    def client(_: int) -> list[float]:
        latencies = []
        with requests.Session() as session:
            for _ in range(requests_per_client):
                t0 = time.perf_counter()
                r = session.post(url, files={"file": ("clip.mp4", data, "video/mp4")},
                                 data={} if transcript is None else {"transcript": transcript}, timeout=600)
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


def in_process_speech_seconds(checkpoint: str, data: bytes, repeats: int) -> float:
    """Median wall time of what Serve does for an upload without a transcript, in one process:
    the whole clip, then transcription, then every utterance's window with its context."""
    from mmsa_ray.features import collate
    from mmsa_ray.predict import Predictor
    from mmsa_ray.speech import SpeechConfig, SpeechRecognizer
    from mmsa_ray.utterances import utterance_rows

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    recognizer = SpeechRecognizer(SpeechConfig(cpu_threads=1))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        predictor.predict_batch(collate([predictor.preprocess(data)]))
        texts: list[str] = []
        feats = []
        for u in utterance_rows("talk.mp4", recognizer.transcribe(data)):  # the rows Serve's Speech returns
            feats.append(predictor.preprocess(data, transcript=u["transcript"], start=u["start"], end=u["end"],
                                              context=list(texts)))
            texts.append(u["transcript"])
        if feats:
            predictor.predict_batch(collate(feats))
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def post(url: str, data: bytes, name: str = "talk.mp4", **form: str):
    import requests

    return requests.post(url, files={"file": (name, data, "video/mp4")}, data=form, timeout=600)


def open_loop(url: str, data: bytes, rate: float, seconds: float) -> list[tuple[int, float]]:
    """POST at a fixed `rate` per second for `seconds` whatever the answers: (status, latency s)."""
    def one(_):
        t0 = time.perf_counter()
        r = post(url, data)
        return r.status_code, time.perf_counter() - t0

    n = max(1, int(rate * seconds))
    with cf.ThreadPoolExecutor(min(n, 64)) as pool:
        futures = []
        start = time.perf_counter()
        for k in range(n):
            time.sleep(max(0.0, start + k / rate - time.perf_counter()))
            futures.append(pool.submit(one, k))
        return [f.result() for f in futures]


def speech_section(args) -> None:
    """Uploads without a transcript on the app as `mmsa-ray serve` plans it here."""
    import ray
    from ray import serve

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speech import make_talk

    from mmsa_ray.pretrained import default_checkpoint
    from mmsa_ray.serve import ServeConfig, build_app, http_options
    from mmsa_ray.serve.plan import plan_resources

    tmp = Path(tempfile.mkdtemp(prefix="mmsa-bench-serve-"))
    checkpoint = args.checkpoint or str(default_checkpoint())
    talks = {f"{s} s": (tmp / f"talk{s}.mp4") for s in (5, 30)}
    for name, path in talks.items():
        make_talk(path, minutes=float(name.split()[0]) / 60)
    baseline = {name: in_process_speech_seconds(checkpoint, path.read_bytes(), repeats=3)
                for name, path in talks.items()}
    ray.init(include_dashboard=False, log_to_driver=False)
    config = ServeConfig(checkpoint=checkpoint, port=free_port())
    plan = plan_resources(config, ray.cluster_resources())
    print("plan:", *plan.lines(), sep="\n  ")
    url = f"http://127.0.0.1:{config.port}/v1/predict"
    rows = []
    try:
        serve.start(http_options=http_options(config))
        serve.run(build_app(config, plan), name="bench", route_prefix="/")
        for name, path in talks.items():
            data = path.read_bytes()
            post(url, data)  # warm-up
            for clients in args.clients:
                rows.append((name, clients, load(url, data, None, clients, max(1, args.requests // clients))))
        data = talks["5 s"].read_bytes()
        sustained = next(r for name, c, r in rows if name == "5 s" and c == max(args.clients))["rps"]
        answers = open_loop(url, data, 2 * sustained, args.overload_s)
        after = post(url, data)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\n{'clip':<6} {'clients':>7} {'n':>4} {'p50 s':>7} {'p95 s':>7} {'req/s':>6} {'in-proc s':>9} "
          f"{'p50/in-proc':>11}")
    for name, clients, r in rows:
        print(f"{name:<6} {clients:>7} {r['n']:>4} {r['p50']:>7.2f} {r['p95']:>7.2f} {r['rps']:>6.2f} "
              f"{baseline[name]:>9.2f} {r['p50'] / baseline[name]:>11.2f}")
    print("target: p50 at 1 client <= 1.2x in-process")
    refused = [t for code, t in answers if code == 503]
    served = [t for code, t in answers if code == 200]
    other = sorted({code for code, _ in answers} - {200, 503})
    served_p50 = np.median(served) if served else float("nan")
    refused_p95 = np.percentile(refused, 95) if refused else float("nan")
    print(f"\nopen loop at 2x the sustained {sustained:.2f} req/s for {args.overload_s:g} s: {len(answers)} uploads, "
          f"{len(served)} answered (p50 {served_p50:.2f} s), {len(refused)} refused with 503 "
          f"({len(refused) / len(answers):.0%}; p95 {refused_p95:.3f} s)"
          f"{f', other codes {other}' if other else ''}; the next upload: HTTP {after.status_code}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=("model", "speech"), default="model",
                        help="model: clips with a transcript, batching off and on (default); speech: uploads "
                        "without a transcript on the planned app, and overload")
    parser.add_argument("--overload-s", type=float, default=20.0,
                        help="speech: seconds of load at 2x the sustained rate")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: a random-initialised model)")
    parser.add_argument("--clip", help="media file to POST (default: a generated 3.6 s 640x360 clip)")
    parser.add_argument("--transcript", default="I can't believe you did that, it's wonderful!")
    parser.add_argument("--requests", type=int, default=12, help="requests per measurement (split across clients)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrent client counts")
    parser.add_argument("--max-batch-size", type=int, default=8, help="batch size of the batching run")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.02)
    parser.add_argument("--num-gpus", type=float, default=None,
                        help="GPUs per model replica (default: 1 if CUDA is available)")
    return parser


def _print_results(results: dict[tuple[str, int], dict[str, float]], baseline: float, clients: list[int]) -> None:
    """The latency and throughput table of the batching runs, and the two ratios the targets name."""
    print(f"\n{'mode':<10} {'clients':>7} {'n':>4} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>7} {'p50/in-proc':>12}")
    for (label, n_clients), r in results.items():
        print(f"{label:<10} {n_clients:>7} {r['n']:>4} {r['p50'] * 1000:>9.1f} {r['p95'] * 1000:>9.1f}"
              f" {r['rps']:>7.2f} {r['p50'] / baseline:>12.2f}")
    lo, hi = min(clients), max(clients)
    print(f"\np50 at {lo} client / in-process: unbatched {results[('unbatched', lo)]['p50'] / baseline:.2f}, "
          f"batched {results[('batched', lo)]['p50'] / baseline:.2f}  (target <= 1.25)")
    print(f"req/s at {hi} clients, batched / unbatched: "
          f"{results[('batched', hi)]['rps'] / results[('unbatched', hi)]['rps']:.2f}  "
          f"(target >= 1.5 on GPU, >= 1.0 on CPU)")


def main() -> None:
    args = _parser().parse_args()
    if args.section == "speech":
        speech_section(args)
        return

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

    _print_results(results, baseline, args.clients)


if __name__ == "__main__":
    main()
