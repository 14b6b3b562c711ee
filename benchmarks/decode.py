"""Clip decoding + features: ours against the floor and a seed-style loader, in one run.

    python benchmarks/decode.py [--clip FILE] [--repeats 5] [--seconds 5] [--gop 250]

Everything single-threaded (torch, OpenCV, the decoders). Per clip, median of --repeats:
  ours   media.decode_clip (16 frames 112x112 spanning the clip + 16 kHz mono audio)
         + features.video_features + features.log_mel
  floor  PyAV decoding every video frame (no conversion), plus the audio track
  seed   the seed's loader: OpenCV reading the first 30 frames resized to 224x224, plus
         an `ffmpeg` subprocess writing 16 kHz mono wav, read back, then the same mel
         (skipped, with a message, when ffmpeg is not on PATH)
and prints seed/ours (target >= 2) and floor/ours (> 1 means we beat decoding everything).

Without --clip a 720p 30 fps H.264 (x264 preset veryfast, default GOP: keyint 250,
3 B-frames) + AAC 44.1 kHz stereo clip with a textured moving picture is generated
with PyAV; --gop sets its keyframe interval (e.g. 30 for a phone-like 1 s GOP).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def ours(path: str) -> None:
    from mmsa_ray import features
    from mmsa_ray.media import DecodeConfig, decode_clip

    clip = decode_clip(path, config=DecodeConfig(threads=1))
    features.video_features(clip.frames[None])
    if clip.audio is not None:
        features.log_mel([clip.audio], features.FeatureConfig())


def floor(path: str) -> None:
    import av

    with av.open(path) as c:
        vs = c.streams.video[0]
        vs.codec_context.thread_count = 1
        for packet in c.demux(vs, *c.streams.audio[:1]):
            packet.decode()


def seed(path: str) -> None:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    frames = []
    while len(frames) < 30:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(img, (224, 224)))
    cap.release()
    video = np.stack(frames).astype(np.float32) / 255.0
    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "a.wav")
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", path, "-vn",
                        "-acodec", "pcm_s16le", "-ar", "16000", "-ac", "1", wav], check=False)
        audio = _read_wav(wav) if os.path.exists(wav) else None
    from mmsa_ray import features
    if audio is not None and audio.size:
        features.log_mel([audio], features.FeatureConfig())
    del video


def _read_wav(path: str) -> np.ndarray:
    import wave

    with wave.open(path) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def timeit(fn, path: str, repeats: int) -> float:
    fn(path)  # warm-up (imports, first-call allocations)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", help="video file to decode (default: generate a 720p H.264/AAC clip)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per loader (median reported)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the generated clip")
    p.add_argument("--gop", type=int, default=250, help="keyframe interval of the generated clip (x264 default 250)")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        cv2 = None

    tmp = tempfile.TemporaryDirectory()
    path = args.clip
    if path is None:
        import mediagen
        t = time.perf_counter()
        path = str(mediagen.write_video(Path(tmp.name) / "bench720.mp4", args.seconds, 1280, 720, 30,
                                        audio=(44100, 2, "aac"), pattern="texture",
                                        options={"g": str(args.gop)}))
        print(f"generated {path} ({os.path.getsize(path) / 1e6:.1f} MB, {time.perf_counter() - t:.1f} s)")
    print(f"clip: {path}")

    (t_ours, m_ours), (t_floor, m_floor) = timeit(ours, path, args.repeats), timeit(floor, path, args.repeats)
    print("median (min) of", args.repeats, "runs")
    print(f"ours  decode_clip + video_features + log_mel : {t_ours * 1e3:8.1f} ms ({m_ours * 1e3:.1f})")
    print(f"floor PyAV decode of every frame + audio     : {t_floor * 1e3:8.1f} ms ({m_floor * 1e3:.1f})")
    print(f"floor/ours = {t_floor / t_ours:.2f} ({m_floor / m_ours:.2f})  (>1: faster than decoding every frame)")
    if cv2 is None:
        print("seed: skipped (opencv-python-headless not installed: pip install '.[bench]')")
    elif shutil.which("ffmpeg") is None:
        print("seed: skipped (no ffmpeg on PATH; e.g. apt-get install -y ffmpeg)")
    else:
        t_seed, m_seed = timeit(seed, path, args.repeats)
        print(f"seed  OpenCV 30 frames @224 + ffmpeg wav + mel: {t_seed * 1e3:8.1f} ms ({m_seed * 1e3:.1f})")
        print(f"seed/ours  = {t_seed / t_ours:.2f} ({m_seed / m_ours:.2f})  (target >= 2)")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
