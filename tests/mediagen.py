"""Test media written with PyAV: colour-coded video, tones, and hostile files.

Plain functions, each writing into a path or directory the caller owns.

Frame code (pattern="index"): frame i is a flat colour whose R, G, B levels are the
three base-14 digits of i (level = 16 * (digit + 1), i.e. 16..224, 16 apart), so any
sane codec keeps it readable: `frame_index(decoded_frame)` recovers i from the centre
of the frame (tolerates +-7 levels of error). A small dark square moves along the
bottom edge so the codec has motion to encode. pattern="texture" is a smoother,
natural-ish picture (gradients, moving blobs) with fresh noise in every frame, which
x264 cannot predict, so it codes nearly every frame as a P-frame. pattern="scene" is
camera-like: a detailed static set seen through a slowly panning camera, two moving
figures, and film grain; x264 codes it with the B-frames it uses on real footage.
"""

from __future__ import annotations

import fractions
import functools
import os
from pathlib import Path

import numpy as np

_BASE = 14  # digits per channel: 14**3 = 2744 distinct frames
_STEP = 16

# container extension -> default audio codec that the container accepts
_AUDIO_FOR = {"mp4": "aac", "mov": "aac", "m4a": "aac", "mkv": "aac", "webm": "libopus",
              "avi": "libmp3lame", "wav": "pcm_s16le", "mp3": "libmp3lame", "ogg": "libopus",
              "opus": "libopus", "flac": "flac", "ts": "aac", "aac": "aac", "m4b": "aac"}
_PIX_FMT = {"mjpeg": "yuvj420p", "gif": "rgb8"}


def index_colour(i: int) -> tuple[int, int, int]:
    """RGB 0..255 of frame i's code colour."""
    digits = (i % _BASE, (i // _BASE) % _BASE, (i // _BASE ** 2) % _BASE)
    return tuple(_STEP * (d + 1) for d in digits)  # type: ignore[return-value]


def frame_index(frame: np.ndarray) -> int:
    """Frame index encoded by `index_colour`, read from the centre quarter of a decoded frame.

    frame: uint8 [3, H, W] (decode_clip layout) or [H, W, 3].
    """
    f = np.asarray(frame, np.float64)
    if f.shape[0] == 3 and f.shape[-1] != 3:
        f = f.transpose(1, 2, 0)
    h, w = f.shape[:2]
    patch = f[h // 4: max(h // 4 + 1, h * 3 // 4), w // 4: max(w // 4 + 1, w * 3 // 4)]
    r, g, b = (np.clip(np.rint(patch[..., c].mean() / _STEP) - 1, 0, _BASE - 1) for c in range(3))
    return int(r + _BASE * g + _BASE ** 2 * b)


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone: float32 [channels, round(seconds*rate)] in [-amplitude, amplitude]."""
    t = np.arange(round(seconds * rate)) / rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[None], channels, axis=0)


def _picture(i: int, t: float, width: int, height: int, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """One frame, uint8 [H, W, 3]."""
    if pattern == "index":
        img = np.empty((height, width, 3), np.uint8)
        img[:] = index_colour(i)
        s = max(1, min(width, height) // 8)  # moving dark square on the bottom edge
        x = int((t * 0.37 % 1.0) * max(1, width - s))
        img[height - s:, x:x + s] = 10
        return img
    if pattern == "texture":
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        img = np.empty((height, width, 3), np.float32)
        img[..., 0] = 128 + 90 * np.sin(xx / width * 6.28 + t * 1.3)
        img[..., 1] = 128 + 90 * np.sin(yy / height * 6.28 - t * 0.9)
        img[..., 2] = 128 + 90 * np.sin((xx + yy) / (width + height) * 12.5 + t * 2.1)
        for k in range(3):  # blobs on Lissajous paths
            cx = width * (0.5 + 0.35 * np.sin(t * (0.7 + k * 0.3) + k))
            cy = height * (0.5 + 0.35 * np.cos(t * (0.5 + k * 0.4) + 2 * k))
            r2 = (min(width, height) / (6 + 2 * k)) ** 2
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r2] = (40 + 70 * k, 220 - 60 * k, 90 + 50 * k)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)
    if pattern == "scene":
        return _scene(t, width, height, rng)
    raise ValueError(f"unknown pattern {pattern!r} (index | texture | scene)")


_PAN = (25.0, 3.0)  # camera pan: px/s to the right, px of vertical sway


@functools.lru_cache(maxsize=2)
def _scene_set(width: int, height: int) -> np.ndarray:
    """The static set, float32 [H + margin, W + margin, 3]: shading, fine detail, fixed texture."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:height + 2 * int(_PAN[1]) + 2, 0:width + 8 * int(_PAN[0])].astype(np.float32)
    img = np.stack([128 + 60 * np.sin(xx / 37) * np.cos(yy / 53) + 30 * np.sin(xx / 5.3 + yy / 7.1),
                    110 + 50 * np.cos(xx / 61 + yy / 29) + 25 * np.sin(yy / 4.7),
                    90 + 40 * np.sin((xx + yy) / 83) + 20 * np.cos(xx / 3.9)], -1)
    return img + rng.normal(0, 6, img.shape).astype(np.float32)


def _scene(t: float, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Frame at t seconds of pattern="scene", uint8 [H, W, 3].

    Tuned so x264 at its defaults spends about 1.5 Mbit/s on 720p (a keyframe of ~90 KB,
    other frames of ~4 KB), a usual rate for 720p web and TV encodes; most of the bits go
    to the grain and the motion, as in real video.
    """
    dx = int(round(t * _PAN[0])) % (8 * int(_PAN[0]))
    dy = int(round(_PAN[1] * (1 + np.sin(t))))
    img = _scene_set(width, height)[dy:dy + height, dx:dx + width].copy()
    yy, xx = np.ogrid[0:height, 0:width]
    for k in range(2):  # two figures moving about
        cx = width * (0.35 + 0.3 * k + 0.15 * np.sin(t * (1.7 + k)))
        cy = height * (0.45 + 0.045 * np.sin(t * (2.9 - k)))
        figure = ((xx - cx) / (width * 0.1)) ** 2 + ((yy - cy) / (height * 0.3)) ** 2 < 1
        face = np.stack(np.broadcast_arrays(200 + 20 * np.sin(xx / 9.0 + t * 8), 150 + 15 * np.sin(yy / 7.0 + t * 5),
                                            np.full((1, 1), 120.0 - 30 * k)), -1)
        img[figure] = face[figure]
    grain = rng.normal(0, 3, ((height + 1) // 2, (width + 1) // 2, 3)).astype(np.float32)  # 2x2-pixel grain
    img += grain.repeat(2, 0).repeat(2, 1)[:height, :width]
    return np.clip(img, 0, 255).astype(np.uint8)


def write_video(
    path: str | os.PathLike, seconds: float = 2.0, width: int = 160, height: int = 120,
    fps: float | fractions.Fraction = 15, codec: str = "libx264",
    audio: tuple[int, int, str | None] | None = None, pattern: str = "index",
    pix_fmt: str | None = None, options: dict[str, str] | None = None, freq: float = 440.0,
    rotation: float | None = None, seed: int = 0, container_options: dict[str, str] | None = None,
    start: float = 0.0, audio_seconds: float | None = None, video_delay: float = 0.0,
    frame_times: list[float] | None = None, audio_gaps: list[tuple[float, float]] = (),
    audio_samples: np.ndarray | None = None,
) -> Path:
    """Write a video (container from the extension: mp4/mkv/webm/avi/mov) and return its path.

    frames: round(seconds*fps), frame i at pts start + i/fps, picture from `pattern`.
    audio: None, or (rate Hz, channels, codec or None for the container's default) carrying
    a `freq` Hz tone from `start` for `audio_seconds` (default: as long as the video).
    options: encoder options (e.g. {"g": "10"} for a keyframe every 10 frames);
    container_options: muxer options (e.g. {"movflags": "faststart"}). rotation:
    display-matrix rotation in degrees, if any. start: timestamp of the first frame and
    sample, seconds (rounded to a frame period), as in a capture cut from a longer stream.
    video_delay: the video starts this much after the audio (seconds; screen recorders,
    captures). frame_times: variable frame rate, frame i shown from frame_times[i] seconds
    (millisecond timestamps; screen recordings hold a still picture for seconds).
    audio_gaps: [(from, to)] seconds whose audio packets are dropped while the timestamps
    go on, as a lossy transmission or a broadcast glitch leaves them. audio_samples:
    float32 [channels, N] at the audio rate to encode instead of the tone (speech).
    """
    import av

    path = Path(path)
    ext = path.suffix.lstrip(".").lower()
    fps = fractions.Fraction(fps).limit_denominator(1001)
    n = max(1, round(seconds * fps)) if frame_times is None else len(frame_times)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", options=container_options or {}) as container:
        vs = _video_stream(container, codec, fps, width, height, pix_fmt, options, rotation,
                           millisecond_pts=frame_times is not None)
        aus = None
        if audio is not None:
            rate, channels, acodec = audio
            aus = container.add_stream(acodec or _AUDIO_FOR[ext], rate=rate)
            aus.layout = "mono" if channels == 1 else "stereo"
        first = round(start * fps) + round(video_delay * fps)
        for i in range(n):
            t = float(i / fps) if frame_times is None else frame_times[i]
            frame = av.VideoFrame.from_ndarray(_picture(i, t, width, height, pattern, rng), format="rgb24")
            if frame_times is None:
                frame.pts, frame.time_base = first + i, 1 / fps
            else:
                frame.pts, frame.time_base = round((start + video_delay + t) * 1000), fractions.Fraction(1, 1000)
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if aus is not None:
            a_seconds = float(n / fps) if audio_seconds is None else audio_seconds
            wave = tone(a_seconds, aus.rate, channels, freq) if audio_samples is None else audio_samples
            _encode_audio(container, aus, wave, round(start * fps) / fps, audio_gaps)
    return path


def _video_stream(container, codec: str, fps: fractions.Fraction, width: int, height: int, pix_fmt: str | None,
                  options: dict[str, str] | None, rotation: float | None, millisecond_pts: bool):
    """A video stream of `container` set up as write_video asks: fast encoder presets
    unless `options` say otherwise, one encoder thread, millisecond timestamps for variable
    frame rates."""
    vs = container.add_stream(codec, rate=fps)
    vs.width, vs.height = width, height
    vs.pix_fmt = pix_fmt or _PIX_FMT.get(codec, "yuv420p")
    vs.codec_context.thread_count = 1
    if millisecond_pts:
        vs.codec_context.time_base = fractions.Fraction(1, 1000)
    opts = {"preset": "veryfast"} if codec == "libx264" else {}
    if codec == "libvpx-vp9":
        opts = {"deadline": "realtime", "cpu-used": "8"}
    vs.options = {**opts, **(options or {})}
    if rotation is not None:
        vs.set_display_rotation(rotation)
    return vs


def _encode_audio(container, stream, samples: np.ndarray, start: float = 0.0,
                  gaps: list[tuple[float, float]] = ()) -> None:
    import av

    layout = "mono" if samples.shape[0] == 1 else "stereo"
    step = 1024

    def mux(packets):
        for p in packets:  # a packet inside a gap is lost; the timestamps of the others stay
            t = float(p.pts * p.time_base) - start if p.pts is not None else None
            if t is None or not any(a <= t < b for a, b in gaps):
                container.mux(p)

    for begin in range(0, samples.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, begin:begin + step]), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.time_base = stream.rate, fractions.Fraction(1, stream.rate)
        frame.pts = begin + round(start * stream.rate)
        mux(stream.encode(frame))
    mux(stream.encode(None))


def write_audio(
    path: str | os.PathLike, seconds: float = 1.0, rate: int = 44100, channels: int = 2,
    codec: str | None = None, freq: float = 440.0, amplitude: float = 0.5, samples: np.ndarray | None = None,
) -> Path:
    """Write an audio-only file (wav/m4a/m4b/mp3/opus/ogg/flac/aac (ADTS) by extension) with a
    `freq` Hz tone (amplitude 0: digital silence), or `samples` (float32 [channels, N] at
    `rate`; `seconds` is then ignored). m4b (an audio book) is MP4 audio, written by
    FFmpeg's `ipod` muxer as Apple's tools write it."""
    import av

    path = Path(path)
    ext = path.suffix.lstrip(".").lower()
    fmt = {"opus": "ogg", "m4a": "mp4", "m4b": "ipod", "aac": "adts"}.get(ext)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec or _AUDIO_FOR[ext], rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        _encode_audio(container, stream, tone(seconds, rate, channels, freq, amplitude) if samples is None else samples)
    return path


ESPEAK_RATE = 22050  # Hz, what espeak-ng writes


def espeak(text: str, directory: str | os.PathLike, voice: str | None = None) -> np.ndarray:
    """espeak-ng's speech of `text` (needs the espeak-ng program; `voice` one of
    `espeak-ng --voices`, default its own), trimmed of its own leading and trailing silence:
    float32 [N] in [-1, 1] at ESPEAK_RATE."""
    import subprocess

    import av

    path = Path(directory) / "espeak.wav"
    subprocess.run(["espeak-ng", *(["-v", voice] if voice else []), "-w", str(path), text], check=True)
    with av.open(str(path)) as c:
        x = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]).astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(x) > 0.02)
    return x[loud[0]:loud[-1] + 1]


def spoken(sentences: list[str], rate: int = 16000, lead_s: float = 0.7, gap_s: float = 1.5,
           tail_s: float = 0.8) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """espeak-ng saying `sentences` with `gap_s` of silence between them (and lead_s before,
    tail_s after) -> (float32 [N] mono at `rate`, [(start, end)] seconds of each sentence)."""
    import tempfile

    parts, spans, t = [np.zeros(round(lead_s * ESPEAK_RATE), np.float32)], [], lead_s
    for i, s in enumerate(sentences):
        with tempfile.TemporaryDirectory() as tmp:
            x = espeak(s, tmp)
        parts.append(x)
        spans.append((t, t + len(x) / ESPEAK_RATE))
        gap = round((gap_s if i + 1 < len(sentences) else tail_s) * ESPEAK_RATE)
        parts.append(np.zeros(gap, np.float32))
        t += (len(x) + gap) / ESPEAK_RATE
    wave = np.concatenate(parts) * 0.8
    if rate != ESPEAK_RATE:
        wave = np.interp(np.arange(round(len(wave) * rate / ESPEAK_RATE)) / rate,
                         np.arange(len(wave)) / ESPEAK_RATE, wave).astype(np.float32)
    return wave, spans


def clips(directory: str | os.PathLike) -> dict[str, Path]:
    """Everyday clips: {"av": mp4 H.264 + AAC 44.1 kHz mono, 2 s, 160x120, 15 fps, 440 Hz tone,
    colour-coded frames; "video_only": same without audio; "audio_only": 1 s wav}."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return {
        "av": write_video(d / "av.mp4", 2.0, 160, 120, 15, audio=(44100, 1, "aac")),
        "video_only": write_video(d / "video_only.mp4", 2.0, 160, 120, 15),
        "audio_only": write_audio(d / "audio_only.wav", 1.0, 16000, 1),
    }


def hostile_files(directory: str | os.PathLike) -> dict[str, Path]:
    """Files no decoder should accept: name -> path.

    empty, text, random bytes, an mp4 truncated to its first third (moov at the end, so
    no index), a faststart mp4 cut inside its first frame, a faststart mp4 cut to its
    header (ftyp + moov, no media data), just the ftyp box, and an mp4 whose middle
    half is overwritten with random bytes.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    good = write_video(d / "good.mp4", 2.0, 160, 120, 15, audio=(16000, 1, "aac"), pattern="texture")
    fast = write_video(d / "good_faststart.mp4", 2.0, 160, 120, 15, audio=(16000, 1, "aac"), pattern="texture",
                       container_options={"movflags": "faststart"})
    data, fdata = good.read_bytes(), fast.read_bytes()
    # faststart layout: ftyp | moov | mdat; the mdat payload starts 8 bytes after its tag
    mdat = fdata.find(b"mdat") - 4
    assert mdat > 0 and fdata.find(b"moov") < mdat, "expected a faststart mp4"
    out = {
        "empty": b"",
        "text": b"this is not a video, just some text\n" * 20,
        "random": rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes(),
        "truncated_third": data[: len(data) // 3],
        "truncated_first_frame": fdata[: mdat + 8 + 40],
        "header_only": fdata[:mdat + 8],
        "ftyp_only": fdata[: int.from_bytes(fdata[:4], "big")],
    }
    mid = bytearray(data)
    a, b = len(data) // 4, 3 * len(data) // 4
    mid[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
    out["corrupt_middle"] = bytes(mid)
    paths = {}
    for name, blob in out.items():
        p = d / f"{name}.mp4"
        p.write_bytes(blob)
        paths[name] = p
    good.unlink()
    fast.unlink()
    return paths


MUTATIONS = ("flip", "truncate", "zero", "duplicate", "delete", "header", "size")


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A damaged copy of `data`, as storage, transfer or a bad muxer leave files.

    flip: up to 40 random bit flips; truncate: cut at a random offset; zero / duplicate /
    delete: a random range of up to 1/8 of the file zeroed, repeated or removed; header:
    up to 12 random bytes in the first 2 KB (container headers); size: a 32-bit field in
    the first 4 KB set to 0, 1, 2**31-1 or 2**32-1 (box sizes, counts, offsets).
    """
    n = len(data)
    b = bytearray(data)
    i = int(rng.integers(0, n))
    span = int(rng.integers(1, max(2, n // 8)))
    if kind == "flip":
        for _ in range(int(rng.integers(1, 40))):
            b[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        del b[i:]
    elif kind == "zero":
        b[i:i + span] = bytes(len(b[i:i + span]))
    elif kind == "duplicate":
        b[i:i] = b[i:i + span]
    elif kind == "delete":
        del b[i:i + span]
    elif kind == "header":
        for _ in range(int(rng.integers(1, 12))):
            b[int(rng.integers(0, min(n, 2048)))] = int(rng.integers(0, 256))
    elif kind == "size":
        j = int(rng.integers(0, max(1, min(n - 4, 4096))))
        b[j:j + 4] = (0, 1, 2 ** 31 - 1, 2 ** 32 - 1)[int(rng.integers(0, 4))].to_bytes(4, "big")
    else:
        raise ValueError(f"unknown mutation {kind!r}; one of {MUTATIONS}")
    return bytes(b)


TALK_SENTENCES = [
    "My grandmother grew tomatoes behind the old stone barn.",
    "Every summer the river flooded the lower fields.",
    "We walked to the market on Saturday mornings.",
    "The baker sold warm bread and small apple pies.",
    "Our teacher read stories about sailors and whales.",
    "In winter the lake froze and children skated for hours.",
    "My brother built a wooden boat with his friends.",
    "The library closed early because of the storm.",
    "Nobody expected the train to arrive so late.",
    "She painted the kitchen door a bright yellow.",
    "The museum opened a new exhibition about volcanoes.",
    "After dinner we played cards until midnight.",
    "The mayor promised to repair the bridge next spring.",
    "Thousands of people gathered in the square to hear the band.",
    "The doctor said the results would arrive on Monday.",
    "A small dog followed us all the way home from the park.",
    "The company will open a new factory near the harbour.",
    "Please turn off the lights when you leave the office.",
    "The students cheered when the exam was cancelled.",
    "My neighbour plays the piano every evening after work.",
    "The storm knocked down three trees on our street.",
    "We watched the sunset from the top of the hill.",
    "The restaurant serves fresh fish every Friday.",
    "He forgot his keys at the station again.",
    "The farmers expect a good harvest this autumn.",
    "Our flight was delayed by four hours because of fog.",
    "The children built a snowman in the garden.",
    "The new road will connect the two villages.",
    "I have never seen so many stars in the sky.",
    "The orchestra rehearsed the symphony all afternoon.",
]


def long_talk(directory: str | os.PathLike, voice: str = "en-us") -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """A talk of a little over ten minutes (float32 [N] mono at 16 kHz) made to stress the
    speech stage's chunking: TALK_SENTENCES spoken by espeak-ng, some apart with pauses, some
    back to back across the 300 s and 600 s chunk borders, a 20 s stretch of speech over
    noise, and music-like tones, noise and silence between. -> (audio, [(start, end, text)]
    seconds of each sentence, in order)."""
    rate = 16000
    said = [np.interp(np.arange(round(len(x) * rate / ESPEAK_RATE)) / rate, np.arange(len(x)) / ESPEAK_RATE,
                      x).astype(np.float32) * 0.7 for x in (espeak(s, directory, voice) for s in TALK_SENTENCES)]
    rng = np.random.default_rng(7)
    audio = np.zeros(625 * rate, np.float32)
    spans: list[tuple[float, float, str]] = []
    queue = iter(range(len(TALK_SENTENCES)))

    def say(t: float, gap_s: float, until: float) -> float:
        """Sentences from t on, gap_s apart, while they start before `until`; -> where the last ended."""
        while t < until:
            i = next(queue)
            a = round(t * rate)
            audio[a:a + len(said[i])] += said[i]
            spans.append((t, t + len(said[i]) / rate, TALK_SENTENCES[i]))
            t += len(said[i]) / rate + gap_s
        return t - gap_s

    def bed(t0: float, t1: float, kind: str, level: float) -> None:
        a, b = round(t0 * rate), round(t1 * rate)
        t = np.arange(b - a) / rate
        if kind == "noise":
            audio[a:b] += (rng.standard_normal(b - a) * level).astype(np.float32)
        else:  # a chord that changes every half second: music-like
            roots = np.array([220.0, 246.9, 261.6, 293.7])[(t * 2).astype(int) % 4]
            audio[a:b] += (level * sum(np.sin(2 * np.pi * roots * k * t) / k for k in (1.0, 1.25, 1.5))
                           ).astype(np.float32)

    t = say(2.0, 1.5, 22.0)  # apart, with pauses
    bed(t + 2.0, t + 10.0, "music", 0.1)
    bed(t + 12.0, t + 17.0, "noise", 0.05)
    t = say(t + 20.0, 0.4, t + 38.0)  # 20 s of speech over noise
    bed(t - 22.0, t + 2.0, "noise", 0.02)
    say(287.0, 0.25, 303.0)  # back to back across the first chunk border
    bed(400.0, 410.0, "music", 0.1)
    say(588.0, 0.25, 603.0)  # and the second
    say(612.0, 1.0, 615.0)
    return audio, spans


# Three espeak-ng voices that a speaker encoder tells apart (Resemblyzer similarity between them
# 0.57-0.77 on whole sentences, within each 0.82-0.90): a male, a female and the Klatt synthesiser.
VOICES = ("en-us", "en-us+f4", "en-gb-x-rp+f5")


def dialogue(turns: list[tuple[str, str]], directory: str | os.PathLike, gap_s: float = 0.35,
             lead_s: float = 0.6, tail_s: float = 0.8,
             rate: int = 16000) -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    """espeak-ng saying each (voice, sentence) turn in order, gap_s of silence between turns
    -> (float32 [N] mono at `rate`, [(start, end, voice, sentence)] seconds of each turn)."""
    parts, spans, t = [np.zeros(round(lead_s * rate), np.float32)], [], lead_s
    for i, (voice, sentence) in enumerate(turns):
        x = espeak(sentence, directory, voice)
        x = np.interp(np.arange(round(len(x) * rate / ESPEAK_RATE)) / rate, np.arange(len(x)) / ESPEAK_RATE,
                      x).astype(np.float32) * 0.7
        parts.append(x)
        spans.append((t, t + len(x) / rate, voice, sentence))
        gap = round((gap_s if i + 1 < len(turns) else tail_s) * rate)
        parts.append(np.zeros(gap, np.float32))
        t += (len(x) + gap) / rate
    return np.concatenate(parts), spans


def skimage_picture(name: str) -> np.ndarray:
    """A picture that ships inside scikit-image's wheel (no download) as uint8 [H, W, 3] RGB:
    "astronaut.png" (Eileen Collins, smiling; NASA, public domain), "camera.png" (a man with a
    camera, grey), "coffee.png" (no face)."""
    import skimage
    from PIL import Image

    return np.asarray(Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB"))


def _paste(canvas: np.ndarray, picture: np.ndarray, x: int, y: int, scale: float) -> tuple[int, int, int, int]:
    """`picture` scaled by `scale` with its top-left at (x, y) of `canvas` (in place) -> its box."""
    from PIL import Image

    h, w = round(picture.shape[0] * scale), round(picture.shape[1] * scale)
    canvas[y:y + h, x:x + w] = np.asarray(Image.fromarray(picture).resize((w, h), Image.BILINEAR))
    return x, y, x + w, y + h


def write_faces_video(path: str | os.PathLike, heads: int = 2, seconds: float = 4.0, fps: int = 10,
                      width: int = 480, height: int = 270, audio: np.ndarray | None = None,
                      rotated: bool = False) -> list[list[tuple[int, int, int, int]]]:
    """An H.264 clip over coffee.png's table with `heads` (0, 1 or 2) real heads pasted in: the
    astronaut's smiling head moving right and growing (about 65 -> 80 px of face), then the
    cameraman's head, still, on the right; `audio` (float32 [N] mono at 16 kHz), if given, as
    AAC beside it. `rotated`: stored as a phone stores a portrait video, the pictures turned a
    quarter clockwise with display rotation 90 (players turn them back; width x height is as
    displayed). Returns, per frame, the pasted heads' boxes (x1, y1, x2, y2) px as displayed,
    astronaut first."""
    import av
    from PIL import Image

    background = np.asarray(Image.fromarray(skimage_picture("coffee.png")).resize((width, height)))
    astronaut = skimage_picture("astronaut.png")[30:210, 150:300]  # her head, 150 x 180 px
    cameraman = skimage_picture("camera.png")[95:215, 180:275]  # his head, 95 x 120 px
    n = round(seconds * fps)
    boxes = []
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=fps)
        vs.width, vs.height = (height, width) if rotated else (width, height)  # as stored
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast"}
        if rotated:
            vs.set_display_rotation(90)
        aus = container.add_stream("aac", rate=16000) if audio is not None else None
        if aus is not None:
            aus.layout = "mono"
        for i in range(n):
            frame = background.copy()
            u = i / max(n - 1, 1)
            frame_boxes = [_paste(frame, astronaut, round(10 + 120 * u), 20, 0.75 + 0.2 * u)] if heads >= 1 else []
            if heads >= 2:
                frame_boxes.append(_paste(frame, cameraman, width - 120, 80, 1.0))
            boxes.append(frame_boxes)
            stored = np.ascontiguousarray(np.rot90(frame, k=-1)) if rotated else frame
            container.mux(vs.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        container.mux(vs.encode(None))
        if aus is not None:
            _encode_audio(container, aus, audio[None])
    return boxes
