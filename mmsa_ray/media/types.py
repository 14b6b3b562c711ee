"""The media package's leaf types: the error every decode failure becomes, the decode
settings and the decoded clip. Imports nothing of ours, so the helpers (sampling, durations)
and the core (features, model, predict) use them without importing the decoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class MediaError(Exception):
    """A source that cannot be decoded (or breaks a limit). str(e) == f"{source}: {cause}"."""

    def __init__(self, source: str, cause: str):
        super().__init__(f"{source}: {cause}")
        self.source = source
        self.cause = cause

    def __reduce__(self):  # picklable across Ray workers
        return (MediaError, (self.source, self.cause))


@dataclass
class DecodeConfig:
    num_frames: int = 16  # T
    height: int = 112  # output frame size, pixels
    width: int = 112
    # when set, frames keep the source's aspect ratio as displayed instead, scaled (never up) so
    # that their longer side is at most this many pixels (even sizes); height and width are then unused
    max_side: int | None = None
    sample_rate: int = 16000  # Hz, mono float32 output
    max_duration_s: float = 600.0  # longer sources (or windows) -> MediaError unless a window is given
    max_pixels: int = 4096 * 2160  # source frame w*h cap
    timeout_s: float = 30.0  # wall-clock per clip
    # decoder threads per clip (0 = FFmpeg's choice). 1 by default: batch work runs one
    # decode task per CPU, where more threads only contend; raise it for single-clip latency.
    threads: int = 1


@dataclass
class Clip:
    source: str  # path / "<bytes ...>" description used in errors
    frames: np.ndarray | None  # uint8 [T, 3, H, W] RGB, None when no video stream or none in the window
    audio: np.ndarray | None  # float32 [N] mono in [-1, 1] at sample_rate, None when no audio (in the window)
    sample_rate: int  # Hz
    start: float  # decoded window [start, end), seconds from the start of the source
    end: float
    duration: float  # whole source, seconds (raw audio: may be FFmpeg's estimate unless the window ran to the end)
    fps: float | None  # source video frame rate (average), None without a video stream
    width: int | None  # source video size as displayed (after rotation metadata)
    height: int | None
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 [T] seconds of sampled frames

    @property
    def has_video(self) -> bool:
        return self.frames is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None
