"""A small synthetic dataset in MELD layout whose labels each modality can learn alone.

`make_sample_data(root)` writes ``{train,dev,test}_sent_emo.csv`` (MELD's header) and
one mp4 per row (H.264 video + AAC mono audio, encoded with PyAV) into
``train_splits/``, ``dev_splits_complete/`` and ``output_repeated_splits_test/``, so
every tool that reads MELD (`mmsa_ray.train.meld.read_meld`) reads it unchanged.

The emotion drives all three modalities independently (see `STYLES`):

- video: the frame is one saturated colour per emotion, with per-clip brightness
  jitter, pixel noise and a darker square that drifts around (not label related);
- audio: "syllables" of a tone at one pitch per emotion (250..3000 Hz, about 0.6
  octave apart, so distinct 64-band mel bins), with per-clip pitch/amplitude/phase
  jitter, random syllable timing and background noise;
- text: emotion-specific template sentences ("I’m furious ...", "Ew, ... gross")
  filled with a random emotion-related object (about 18 distinct sentences per
  emotion; MiniLM embeddings of them are linearly separable, pooled or mean).

Sentiment follows the emotion (anger/disgust/fear/sadness negative, neutral neutral,
joy/surprise positive). Everything is drawn from `numpy.random.default_rng` seeded by
(seed, split, row), so one seed gives byte-identical CSVs (and, with the same
FFmpeg build, identical mp4s: x264 runs single-threaded).
"""

from __future__ import annotations

import csv
import fractions
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmsa_ray.labels import EMOTIONS
from mmsa_ray.train.meld import CSV_COLUMNS, SPLITS, clip_name


@dataclass(frozen=True)
class EmotionStyle:
    """The per-emotion cues. colour: RGB 0..255; pitch_hz: tone frequency."""

    colour: tuple[int, int, int]
    pitch_hz: float
    sentiment: str
    templates: tuple[str, ...]  # sentences; {obj} is filled from `objects` at random
    # Emotion-specific on purpose: shared fillers (names, a common object list) became the
    # dominant cue in MiniLM's CLS/pooler output and cost ~10 points of dev accuracy.
    objects: tuple[str, ...]


STYLES: dict[str, EmotionStyle] = {
    "anger": EmotionStyle((220, 30, 30), 250.0, "negative", (
        "I am so angry about {obj}, I’m furious!",
        "This makes me furious, I’m so mad!",
        "Stop it! I’m angry and mad about {obj}!",
        "I hate {obj}, it makes me so angry!",
        "How dare you? I’m furious and angry!",
        "I’m mad, I’m furious, get out!",
    ), ("the mess", "the lie", "the noise", "your attitude")),
    "disgust": EmotionStyle((40, 170, 40), 375.0, "negative", (
        "Ew, {obj} is disgusting and gross.",
        "Eww, gross, that’s disgusting.",
        "Yuck, {obj} is so gross, ew.",
        "Ugh, {obj} smells disgusting, yuck.",
        "Eww, that’s nasty and gross, yuck.",
        "Ew, gross, {obj} is vile and disgusting.",
    ), ("the garbage", "the mouldy cheese", "the dirty sock", "the slime")),
    "fear": EmotionStyle((150, 40, 200), 560.0, "negative", (
        "I’m scared of {obj}, I’m so afraid.",
        "I’m terrified and scared!",
        "Please help, I’m afraid of {obj}, I’m scared.",
        "Oh no, I’m so frightened and scared.",
        "Help! I’m terrified, I’m scared of the dark!",
        "I’m too afraid and scared to go near {obj}.",
    ), ("the dark", "the spider", "the noise downstairs", "the stranger")),
    "joy": EmotionStyle((235, 215, 30), 840.0, "positive", (
        "I’m so happy about {obj}, yay!",
        "This is wonderful, I’m so happy!",
        "Yay, {obj} is great, I’m delighted and happy!",
        "That’s great news, I’m thrilled and happy!",
        "I love {obj}, it makes me so happy and glad.",
        "Ha ha, this is fantastic, I’m happy!",
    ), ("the party", "the gift", "the new job", "the wedding")),
    "neutral": EmotionStyle((128, 128, 128), 1260.0, "neutral", (
        "I’ll bring {obj} tomorrow at noon.",
        "The meeting is at three o’clock.",
        "Can you pass me {obj}, please?",
        "I think {obj} is in the kitchen.",
        "Okay, we can leave at noon.",
        "The bus stops at the corner at nine.",
    ), ("the folder", "the schedule", "the keys", "the receipt")),
    "sadness": EmotionStyle((30, 60, 220), 1890.0, "negative", (
        "I’m so sad about {obj}, I want to cry.",
        "I miss her so much, I’m so sad.",
        "I feel lonely, sad and heartbroken.",
        "I lost {obj} and I’m so sad, I’m crying.",
        "Everything feels gloomy and sad.",
        "I’m sorry, I feel so sad and miserable today.",
    ), ("the funeral", "my old dog", "the breakup", "the goodbye")),
    "surprise": EmotionStyle((30, 200, 200), 2830.0, "positive", (
        "Wow, I can’t believe {obj}! Really?",
        "What?! Really? Wow!",
        "Whoa, {obj}? No way!",
        "No way! Wow, that’s unbelievable!",
        "Oh my gosh, {obj}? Seriously? Wow!",
        "Whoa, I’m shocked, really? No way!",
    ), ("the plot twist", "the twins", "the secret", "the sudden news")),
}
assert tuple(STYLES) == EMOTIONS, "STYLES must cover labels.EMOTIONS in order"

_SPEAKERS = ("Alex", "Sam", "Jordan", "Casey", "Riley", "Morgan", "Taylor", "Jamie", "Robin", "Drew")
MARKER = "sample_data.json"  # written at the root; marks a directory overwrite may replace
_SPLIT_NUMBER = {"train": 0, "dev": 1, "test": 2}  # for seeding; fixed so seeds stay stable
# Independent random streams: default_rng([seed, stream, split, row]). A clip's content
# depends only on its own key, not on generation order or on the other splits' sizes.
_SHUFFLE, _TEXT, _MEDIA = 0, 1, 2


@dataclass
class SampleConfig:
    """Clip format. Defaults give ~30 kB clips at ~50 ms each to synthesise and encode."""

    duration_s: float = 2.0  # mean clip length; each clip varies by ±20 %
    width: int = 128  # even (yuv420p)
    height: int = 96  # even (yuv420p)
    fps: int = 15
    sample_rate: int = 16000  # Hz, mono AAC; media.DecodeConfig's rate, so no resampling
    crf: int = 23  # x264 quality; colours survive any sane value


@dataclass
class SampleSummary:
    """What `make_sample_data` wrote. counts[split][emotion] = clips."""

    root: str
    counts: dict[str, dict[str, int]]
    seconds: float  # wall clock of the whole generation
    bytes_written: int  # size of the mp4s
    files: dict[str, str] = field(default_factory=dict)  # split -> CSV path

    def total(self, split: str) -> int:
        return sum(self.counts[split].values())

    def summary(self) -> str:
        lines = [f"synthetic MELD-layout data in {self.root} "
                 f"({self.seconds:.1f} s, {self.bytes_written / 1e6:.1f} MB of clips)"]
        for split, per_class in self.counts.items():
            lines.append(f"  {split}: {self.total(split)} clips in {SPLITS[split][1]}/ "
                         f"({', '.join(f'{e} {n}' for e, n in per_class.items())})")
        return "\n".join(lines)


def make_sample_data(
    root: str | os.PathLike,
    n_per_class_train: int = 12,
    n_per_class_dev: int = 6,
    n_per_class_test: int = 4,
    seed: int = 0,
    config: SampleConfig | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> SampleSummary:
    """Write a synthetic MELD-layout dataset under root and return what was written.

    n_per_class_*: clips per emotion in each split (0 writes a header-only CSV).
    seed: same seed -> byte-identical CSVs. config: clip format (SampleConfig()).
    overwrite: root may already hold a dataset written by this function (it leaves
    `MARKER` there); its CSVs and dia*_utt*.mp4 clips in the three split folders are
    replaced, nothing else is touched. Without it, or without the marker (a real MELD
    copy), an existing CSV raises FileExistsError. workers: encoding threads (PyAV
    releases the GIL while encoding); default min(4, CPUs).
    """
    t0 = time.perf_counter()
    config = config or SampleConfig()
    if config.width % 2 or config.height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {config.width}x{config.height}")
    sizes = {"train": n_per_class_train, "dev": n_per_class_dev, "test": n_per_class_test}
    for split, n in sizes.items():
        if n < 0:
            raise ValueError(f"n_per_class_{split} must be >= 0, got {n}")
    root = Path(root)
    _prepare_root(root, overwrite)

    jobs = []  # (path, emotion, duration_s, rng) per clip
    files: dict[str, str] = {}
    for split, n in sizes.items():
        files[split], split_jobs = _write_split(root, split, n, seed, config, overwrite)
        jobs.extend(split_jobs)
    counts = {split: {e: n for e in EMOTIONS} for split, n in sizes.items()}

    marker = {"generator": "mmsa_ray.sample_data", "seed": seed, "n_per_class": sizes, "config": asdict(config)}
    (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes_written = list(pool.map(lambda j: write_clip(j[0], j[1], j[2], j[3], config), jobs))
    return SampleSummary(
        root=str(root.absolute()), counts=counts, seconds=time.perf_counter() - t0,
        bytes_written=sum(sizes_written), files=files,
    )


def _prepare_root(root: Path, overwrite: bool) -> None:
    """Make `root`; refuse a file in the way, an existing dataset without `overwrite`, and any dataset this
    module did not write (no `MARKER`: a real MELD copy)."""
    blocked = next((q for q in (root, *root.parents) if q.exists() and not q.is_dir()), None)
    if blocked is not None:
        raise FileExistsError(f"cannot write the dataset to {root}: {blocked} is a file, not a directory")
    root.mkdir(parents=True, exist_ok=True)
    existing = [root / SPLITS[s][0] for s in SPLITS if (root / SPLITS[s][0]).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {[p.name for p in existing]}; pass overwrite=True to replace")
    if existing and not (root / MARKER).is_file():
        # overwrite deletes dia*_utt*.mp4: never do that to a real MELD copy.
        raise FileExistsError(
            f"{root} holds {[p.name for p in existing]} but no {MARKER}, so it was not written by "
            "make_sample_data; refusing to overwrite it (is it a real MELD copy?)"
        )


def _write_split(root: Path, split: str, n: int, seed: int, config: SampleConfig, overwrite: bool):
    """Write one split's CSV (n rows per emotion) and make its clip folder (emptied of old clips on overwrite).
    Returns the CSV's path and the clips to encode: (path, emotion, duration_s, rng) each."""
    csv_name, dir_name = SPLITS[split]
    clip_dir = root / dir_name
    clip_dir.mkdir(exist_ok=True)
    if overwrite:  # stale clips from a larger earlier run would look like missing rows' clips
        for p in clip_dir.glob("dia*_utt*.mp4"):
            if re.fullmatch(r"dia\d+_utt\d+\.mp4", p.name):
                p.unlink()
    rows = _rows(split, n, seed, config)
    _write_csv(root / csv_name, rows)
    jobs = []
    for i, row in enumerate(rows):
        path = clip_dir / clip_name(int(row["Dialogue_ID"]), int(row["Utterance_ID"]))
        rng = np.random.default_rng([seed, _MEDIA, _SPLIT_NUMBER[split], i])
        jobs.append((path, row["Emotion"], row["_duration"], rng))
    return str(root / csv_name), jobs


def write_clip(
    path: str | os.PathLike, emotion: str, duration_s: float, rng: np.random.Generator,
    config: SampleConfig | None = None,
) -> int:
    """Encode one synthetic clip for `emotion` (H.264 + AAC mp4) and return its size in bytes.

    duration_s is rounded to whole frames. The file appears only when complete.
    """
    import av

    config = config or SampleConfig()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    n_frames = max(1, round(duration_s * config.fps))
    frames = synth_frames(emotion, n_frames, config.height, config.width, rng)  # [T,H,W,3] uint8
    audio = synth_audio(emotion, n_frames / config.fps, config.sample_rate, rng)  # [N] float32
    sr = config.sample_rate
    with av.open(str(tmp), "w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=config.fps)
        vs.width, vs.height, vs.pix_fmt = config.width, config.height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": str(config.crf)}
        vs.codec_context.thread_count = 1  # single-threaded x264: deterministic bytes, and we parallelise per clip
        aus = container.add_stream("aac", rate=sr)
        aus.layout = "mono"
        aus.bit_rate = 48_000
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, config.fps)
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        step = aus.codec_context.frame_size or 1024  # AAC takes exactly 1024 samples per frame
        for start in range(0, len(audio), step):
            frame = av.AudioFrame.from_ndarray(audio[None, start:start + step], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, fractions.Fraction(1, sr)
            container.mux(aus.encode(frame))
        container.mux(aus.encode(None))
    os.replace(tmp, path)
    return os.path.getsize(path)


def synth_frames(emotion: str, n_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Frames for one clip: uint8 [T, H, W, 3] RGB.

    The emotion's colour times a brightness in [0.8, 1.15], plus Gaussian pixel
    noise (sigma 6) and a square at 0.55x brightness drifting on a random path.
    """
    colour = np.asarray(STYLES[emotion].colour, np.float32) * rng.uniform(0.8, 1.15)
    side = max(2, min(height, width) // 4)
    pos = rng.uniform([0, 0], [height - side, width - side])
    vel = rng.uniform(-3.0, 3.0, size=2)  # pixels per frame
    frames = np.empty((n_frames, height, width, 3), np.float32)
    frames[:] = colour
    for t in range(n_frames):
        y, x = pos.astype(int)
        frames[t, y:y + side, x:x + side] *= 0.55
        pos = pos + vel
        for k, limit in enumerate((height - side, width - side)):  # bounce off the edges
            if not 0 <= pos[k] <= limit:
                vel[k] = -vel[k]
                pos[k] = np.clip(pos[k], 0, limit)
    frames += rng.standard_normal(size=frames.shape, dtype=np.float32) * 6.0
    return np.clip(frames, 0, 255).astype(np.uint8)


def synth_audio(emotion: str, duration_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Audio for one clip: float32 [N] mono in [-1, 1], N = duration_s * sample_rate.

    2-4 "syllables" (Hann-windowed bursts of 0.2-0.45 s) of a tone at the emotion's
    pitch ±3 % with slight vibrato, amplitude 0.2-0.6, over white noise at 0.005-0.02.
    """
    n = int(round(duration_s * sample_rate))
    t = np.arange(n) / sample_rate
    pitch = STYLES[emotion].pitch_hz * rng.uniform(0.97, 1.03)
    vibrato = 0.01 * np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(pitch * (1 + vibrato)) / sample_rate + rng.uniform(0, 2 * np.pi)
    tone = np.sin(phase)
    envelope = np.zeros(n)
    for _ in range(rng.integers(2, 5)):
        length = int(rng.uniform(0.2, 0.45) * sample_rate)
        if length >= n:
            length = n
        start = rng.integers(0, n - length + 1)
        envelope[start:start + length] = np.maximum(envelope[start:start + length], np.hanning(length))
    audio = rng.uniform(0.2, 0.6) * envelope * tone + rng.normal(0.0, rng.uniform(0.005, 0.02), n)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def synth_transcript(emotion: str, rng: np.random.Generator) -> str:
    """One sentence for `emotion`: a random template with a random object of that emotion."""
    style = STYLES[emotion]
    text = style.templates[rng.integers(len(style.templates))]
    return text.format(obj=style.objects[rng.integers(len(style.objects))])


def _rows(split: str, n_per_class: int, seed: int, config: SampleConfig) -> list[dict]:
    """CSV rows (MELD columns, as strings) plus '_duration' (s) for the clip writer.

    Emotions are shuffled and cut into dialogues of 1-5 utterances; each dialogue sits
    somewhere in a random episode, its utterances back to back with short gaps.
    """
    rng = np.random.default_rng([seed, _SHUFFLE, _SPLIT_NUMBER[split], 0])
    emotions = [e for e in EMOTIONS for _ in range(n_per_class)]
    emotions = [emotions[i] for i in rng.permutation(len(emotions))]
    rows: list[dict] = []
    dialogue = 0
    i = 0
    while i < len(emotions):
        size = int(rng.integers(1, 6))
        season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
        clock = float(rng.uniform(10.0, 1200.0))
        for utt, emotion in enumerate(emotions[i:i + size]):
            text_rng = np.random.default_rng([seed, _TEXT, _SPLIT_NUMBER[split], len(rows)])
            # duration in whole frames, so the CSV times match the clip exactly
            duration = round(config.duration_s * text_rng.uniform(0.8, 1.2) * config.fps) / config.fps
            start = clock
            clock = start + duration
            rows.append({
                "Sr No.": str(len(rows) + 1),
                "Utterance": synth_transcript(emotion, text_rng),
                "Speaker": _SPEAKERS[text_rng.integers(len(_SPEAKERS))],
                "Emotion": emotion,
                "Sentiment": STYLES[emotion].sentiment,
                "Dialogue_ID": str(dialogue),
                "Utterance_ID": str(utt),
                "Season": str(season),
                "Episode": str(episode),
                "StartTime": _format_time(start),
                "EndTime": _format_time(clock),
                "_duration": duration,
            })
            clock += float(text_rng.uniform(0.1, 1.0))
        i += size
        dialogue += 1
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    """MELD's format: utf-8, comma-separated, minimal quoting (times get quoted)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in CSV_COLUMNS])
    os.replace(tmp, path)


def _format_time(seconds: float) -> str:
    """Seconds -> 'hh:mm:ss,mmm'."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def main(argv: list[str] | None = None) -> int:
    """`mmsa-ray make-sample-data DIR`: write the synthetic dataset and print what was written."""
    import argparse

    defaults = SampleConfig()
    p = argparse.ArgumentParser(prog="mmsa-ray make-sample-data", description=make_sample_data.__doc__.splitlines()[0])
    p.add_argument("root", help="directory to write (MELD layout: CSVs + split folders)")
    p.add_argument("--train", type=int, default=12, help="clips per emotion in train (default 12)")
    p.add_argument("--dev", type=int, default=6, help="clips per emotion in dev (default 6)")
    p.add_argument("--test", type=int, default=4, help="clips per emotion in test (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same data (default 0)")
    p.add_argument("--duration", type=float, default=defaults.duration_s,
                   help=f"mean clip length, seconds (default {defaults.duration_s})")
    p.add_argument("--width", type=int, default=defaults.width, help=f"frame width, even (default {defaults.width})")
    p.add_argument("--height", type=int, default=defaults.height,
                   help=f"frame height, even (default {defaults.height})")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset this command wrote earlier in ROOT")
    args = p.parse_args(argv)
    config = SampleConfig(duration_s=args.duration, width=args.width, height=args.height)
    try:
        summary = make_sample_data(args.root, args.train, args.dev, args.test, seed=args.seed,
                                   config=config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        p.error(str(e))
    print(summary.summary())
    return 0
