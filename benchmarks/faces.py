"""Faces: which detector, what a frame costs, and the face stage beside speech recognition.

    python benchmarks/faces.py [--section detectors|speed|stage|all] [--seconds 60] [--threads 1]

detectors  recall and false detections on real faces: the 100 faces and 100 non-face patches
           of scikit-image's LFW subset (25 x 25 px grey crops, upscaled) pasted 20 to a grey
           sheet at 40, 60 and 90 px, plus seven real pictures without a face (scikit-image's
           coffee, chelsea, rocket, retina, hubble_deep_field, motorcycle_left, coins). A face
           counts as found when a detection's centre lies in its patch; every other detection
           is false. Detectors: this project's MTCNN port (mmsa_ray.faces.detect, its
           defaults) and, when `opencv-python-headless<5` is installed (`.[bench]`), OpenCV's
           Haar cascade (haarcascade_frontalface_default, scale 1.1, 5 neighbours, 40 px).
speed      ms per frame of detection at 320x180, 640x360 and 1280x720 (the astronaut in a
           frame of that size), and of expression per face, on --threads threads.
stage      a --seconds clip with two faces and espeak-ng speech (tests/mediagen.py): the face
           stage (decode at --fps frames per second with the longer side at most --max-side px,
           full detection on every --detect-every-th frame, expression, tracks, per 4 s window)
           against SpeechRecognizer.transcribe on the same file, both warmed up, then measured
           alternately three times: CPU seconds (process time, steadier than wall time on a
           shared machine) and the median of their ratios (target: faces <= speech).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

NO_FACE_PICTURES = ("coffee.png", "chelsea.png", "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg",
                    "motorcycle_left.png", "coins.png")


def lfw_sheets(px: int, faces: bool) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """LFW-subset patches (faces: the first 100, else the last 100) 20 to a sheet, each upscaled to
    px x px with px of grey around it -> [(uint8 [1, 3, H, W], patch boxes)]."""
    import skimage
    from PIL import Image

    patches = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")[:100 if faces else None]
    patches = patches if faces else patches[100:]
    cell, sheets = 2 * px, []
    for first in range(0, 100, 20):
        canvas, boxes = np.full((4 * cell, 5 * cell), 128, np.uint8), []
        for k, patch in enumerate(patches[first:first + 20]):
            y, x = (k // 5) * cell + px // 2, (k % 5) * cell + px // 2
            canvas[y:y + px, x:x + px] = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize(
                (px, px), Image.BICUBIC))
            boxes.append((x, y, x + px, y + px))
        sheets.append((np.repeat(canvas[None, None], 3, axis=1), boxes))
    return sheets


def mtcnn_detector():
    from mmsa_ray.face_models import load_face_nets
    from mmsa_ray.faces import FaceConfig, detect

    nets, config = load_face_nets(), FaceConfig()
    return lambda frames: [f.box for f in detect(frames, nets, config)[0]]


def haar_detector():
    try:
        import cv2
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    except (ImportError, AttributeError):
        return None  # OpenCV 5 left the cascades to opencv-contrib
    if cascade.empty():
        return None

    def detect(frames):
        grey = np.ascontiguousarray(np.tensordot([0.299, 0.587, 0.114], frames[0].astype(np.float32), axes=1)
                                    .astype(np.uint8))
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
        return [(x, y, x + w, y + h) for x, y, w, h in found]
    return detect


def score(boxes, patches) -> tuple[int, int]:
    """(patches with a detection centred in them, detections centred in no patch)."""
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    inside = [[p[0] <= cx < p[2] and p[1] <= cy < p[3] for p in patches] for cx, cy in centres]
    found = sum(any(row[j] for row in inside) for j in range(len(patches)))
    return found, sum(not any(row) for row in inside)


def detectors() -> None:
    import mediagen

    candidates = {"MTCNN (ours)": mtcnn_detector(), "OpenCV Haar": haar_detector()}
    pictures = [mediagen.skimage_picture(n).transpose(2, 0, 1)[None].copy() for n in NO_FACE_PICTURES]
    print("detector        face px  found of 100  false on face sheets  false on 100 non-faces  false on 7 pictures")
    for name, detect in candidates.items():
        if detect is None:
            print(f"{name:<15} not installed (pip install 'opencv-python-headless<5')")
            continue
        on_pictures = sum(len(detect(p)) for p in pictures)
        for px in (40, 60, 90):
            found = false = 0
            for frames, patches in lfw_sheets(px, faces=True):
                f, x = score(detect(frames), patches)
                found, false = found + f, false + x
            non_faces = sum(len(detect(frames)) for frames, _ in lfw_sheets(px, faces=False))
            print(f"{name:<15} {px:>7}  {found:>12}  {false:>20}  {non_faces:>22}  {on_pictures:>19}")


def speed(threads: int) -> None:
    import mediagen
    import torch
    from PIL import Image

    from mmsa_ray.face_expressions import expression_inputs, expressions
    from mmsa_ray.face_models import load_face_nets
    from mmsa_ray.faces import detect

    torch.set_num_threads(threads)
    nets, picture = load_face_nets(), mediagen.skimage_picture("astronaut.png")
    for width, height in ((320, 180), (640, 360), (1280, 720)):
        frame = np.zeros((height, width, 3), np.uint8)
        square = np.asarray(Image.fromarray(picture).resize((height, height)))
        frame[:, (width - height) // 2:(width + height) // 2] = square
        frames = frame.transpose(2, 0, 1)[None].copy()
        detect(frames, nets)
        t0, rounds = time.perf_counter(), 5
        for _ in range(rounds):
            found = detect(frames, nets)[0]
        print(f"detect {width}x{height}: {(time.perf_counter() - t0) / rounds * 1000:.0f} ms per frame "
              f"({len(found)} face, {threads} thread(s))")
    inputs = expression_inputs(frames[0], [found[0].box] * 8, 0.1)
    expressions(inputs, nets)
    t0 = time.perf_counter()
    for _ in range(20):
        expressions(inputs, nets)
    print(f"expression: {(time.perf_counter() - t0) / 20 / 8 * 1000:.2f} ms per face (batches of 8)")


def stage(seconds: float, threads: int, fps: float, max_side: int, detect_every: int, rounds: int = 3) -> None:
    import mediagen
    import torch

    from mmsa_ray.face_models import load_face_nets
    from mmsa_ray.faces import FaceConfig, faces_in_window, sample_times
    from mmsa_ray.media import DecodeConfig, decode_clip
    from mmsa_ray.speech import SpeechConfig, SpeechRecognizer

    torch.set_num_threads(threads)
    config, nets = FaceConfig(sample_fps=fps, max_side=max_side, detect_every=detect_every), load_face_nets()
    recognizer = SpeechRecognizer(SpeechConfig(cpu_threads=threads))

    def faces(path: Path, until: float) -> int:
        count = 0
        for start in np.arange(0.0, until, 4.0):
            end = min(start + 4.0, until)
            clip = decode_clip(str(path), start, end, DecodeConfig(num_frames=len(sample_times(start, end, config)),
                                                                   max_side=config.max_side))
            count += faces_in_window(clip.frames, clip.frame_times, nets, config)["face_count"]
        return count

    with tempfile.TemporaryDirectory() as tmp:
        speech, _ = mediagen.spoken(list(mediagen.TALK_SENTENCES) * 4)
        speech = np.resize(speech, round(seconds * 16000)).astype(np.float32)
        path = Path(tmp) / "talk.mp4"
        mediagen.write_faces_video(path, heads=2, seconds=seconds, fps=10, width=640, height=360, audio=speech)
        recognizer.transcribe(str(path))  # warm both (first-call set-up is not what an archive costs)
        faces(path, 4.0)
        asr, face_cpu = [], []
        for _ in range(rounds):  # alternated, so that both see the same machine
            t0 = time.process_time()
            recognizer.transcribe(str(path))
            asr.append(time.process_time() - t0)
            t0 = time.process_time()
            count = faces(path, seconds)
            face_cpu.append(time.process_time() - t0)
    ratio = float(np.median(np.divide(face_cpu, asr)))
    print(f"{seconds:.0f} s of 640x360 video with speech, {threads} thread(s), median of {rounds} rounds: speech CPU "
          f"{np.median(asr):.1f} s, face stage CPU {np.median(face_cpu):.1f} s at {config.sample_fps:g} frames/s, "
          f"frames read at most {config.max_side} px, full detection every {config.detect_every} frame(s) "
          f"({count} tracks over 4 s windows); faces / speech = {ratio:.2f} (target <= 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--section", choices=["detectors", "speed", "stage", "all"], default="all")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the stage's clip")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fps", type=float, default=2.0, help="the stage's frames per second (label --face-fps)")
    p.add_argument("--max-side", type=int, default=640, help="the stage's frame size (label --face-max-side)")
    p.add_argument("--detect-every", type=int, default=2,
                   help="the stage's full detections (label --face-detect-every)")
    a = p.parse_args()
    if a.section in ("detectors", "all"):
        detectors()
    if a.section in ("speed", "all"):
        speed(a.threads)
    if a.section in ("stage", "all"):
        stage(a.seconds, a.threads, a.fps, a.max_side, a.detect_every)


if __name__ == "__main__":
    main()
