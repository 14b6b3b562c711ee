"""From decoded frames to a clip (mmsa_ray.media's decode loop feeds these):

- `VideoSampler`: for each sample time, the frame showing at it (variable frame rate safe;
  the nearest decoded frame where the decoder skipped non-reference frames), converted to
  RGB and resized only for the frames a sample takes;
- `AudioWindow`: decoded audio resampled to mono float32 at the target rate and cut to
  exactly [start, end), with silence for dropouts.

Both end with `result(...)`, which raises MediaError when the stream gave nothing in the
window or stops before its stated end (truncated or corrupt).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

import numpy as np

from mmsa_ray.media.types import DecodeConfig, MediaError

# a sample takes the nearest decoded frame; more skipped frames in a row than this (x264
# --bframes 16 without b-pyramid skips 16) and the clip is decoded again without skipping
MAX_SKIPPED_RUN = 3
AUDIO_GAP_S = 0.05  # a jump in audio timestamps longer than this is a dropout, filled with silence
# ... up to this long: a longer jump ahead is a corrupt timestamp (a day of silence would be
# gigabytes), and what follows is read as contiguous, as FFmpeg reads a timestamp discontinuity
MAX_AUDIO_GAP_S = 600.0
GAP_TOLERANCE_S = 0.5  # decoded data may end this much before the stream's claimed end


class SkipTooCoarse(Exception):
    """Skipping frames left a run too long to sample from (long B-frame runs): decode again, skipping none."""



class VideoSampler:
    """Picks, for each sample time, the frame showing at it: the last decoded frame at or
    before it, or the nearest decoded frame where the decoder skipped frames in between."""

    def __init__(self, samples: np.ndarray, config: DecodeConfig, t0: float, time_base,
                 decoder=None, start: float = 0.0, end: float = math.inf, period: float = 1e-3):
        self.samples = samples
        self.decoder = decoder  # the video codec context: its skip_frame says whether frames are being skipped
        # frame period (s): times frames without any timestamp (by counting), and is how long
        # the last frame shows when it states no duration
        self.period = period
        self.start, self.end = start, end  # the window, seconds
        # frame pts unit, as a float (Fraction arithmetic per frame costs more than the conversion);
        # drained frames carry no time_base of their own
        self.time_base = float(time_base) if time_base else None
        self.config = config
        self.t0 = t0
        self.out: list[np.ndarray | None] = [None] * len(samples)
        self.times = np.zeros(len(samples))
        self.i = 0  # next sample to assign
        self.prev = None  # (time, frame) of the last decoded frame
        self.prev_end = -math.inf  # when the last decoded frame stops showing, if nothing follows it
        self.prev_rgb = None
        # times (s) of the video packets demuxed so far, sorted: frames between two decoded
        # ones were skipped (or dropped) where packets lie between them, held where none do
        self.packet_times: list[float] = []
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()
        self.rotation = 0
        self.n_frames = 0
        self.problem = None
        self.size: tuple[int, int] | None = None  # (H, W) as displayed, with config.max_side

    @property
    def done(self) -> bool:
        return self.i >= len(self.samples)

    @property
    def next_sample(self) -> float:
        return float(self.samples[self.i])

    def note(self, problem: str) -> None:
        self.problem = problem

    def add_packet(self, packet) -> None:
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is not None and self.time_base:
            bisect.insort(self.packet_times, pts * self.time_base - self.t0)

    def _skipped(self, a: float, b: float) -> int:
        """How many frames the stream has strictly between times a and b that were not decoded."""
        i = bisect.bisect_right(self.packet_times, a)
        return bisect.bisect_left(self.packet_times, b, lo=i) - i

    def _rgb(self) -> np.ndarray:
        if self.prev_rgb is None:
            frame = self.prev[1]
            rot = int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4
            self.rotation = rot * 90
            H, W = self._size(frame)
            if rot % 2:  # displayed sideways: scale to the transposed size, then rotate
                H, W = W, H
            # one reformatter per clip keeps swscale's context (and its area filter) cached
            img = self.reformatter.reformat(frame, width=W, height=H, format="rgb24", interpolation="AREA").to_ndarray()
            if rot:
                img = np.rot90(img, rot)
            self.prev_rgb = np.ascontiguousarray(img.transpose(2, 0, 1))  # [3, H, W]
        return self.prev_rgb

    def _size(self, frame) -> tuple[int, int]:
        """(H, W) of the output as displayed: the config's, or with max_side the first frame's
        aspect ratio, its longer side at most max_side (every frame of a clip gets this size)."""
        if self.config.max_side is None:
            return self.config.height, self.config.width
        if self.size is None:
            h, w = (frame.width, frame.height) if self.rotation % 180 else (frame.height, frame.width)
            scale = min(1.0, self.config.max_side / max(h, w, 1))
            self.size = (max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2))
        return self.size

    def add(self, frame) -> None:
        if self.done:
            return
        pts = frame.pts if frame.pts is not None else frame.dts
        if pts is not None and self.time_base:
            t = pts * self.time_base - self.t0
        else:  # no timestamp at all (raw elementary stream): one frame period after the previous
            t = self.prev[0] + self.period if self.prev else 0.0
        if self.prev is not None and t <= self.prev[0]:
            return  # out-of-order / duplicate timestamp: keep the earlier one
        self.n_frames += 1
        shows = frame.duration * self.time_base if frame.duration and self.time_base else self.period
        if self.prev is None:
            self.prev, self.prev_end, self.prev_rgb = (t, frame), t + shows, None
            while not self.done and self.samples[self.i] < t:  # samples before the first frame
                self._assign()
            return
        skipped = self._skipped(self.prev[0], t)
        if (skipped > MAX_SKIPPED_RUN and self.next_sample < t and self.decoder is not None
                and str(self.decoder.skip_frame) != "DEFAULT"):
            raise SkipTooCoarse
        gap = skipped > 0 and t < self.end
        while not self.done and self.samples[self.i] < t:
            s = self.samples[self.i]
            if gap and t - s < s - self.prev[0]:
                break  # frames between were skipped and this one is nearer: it takes the rest
            self._assign()
        self.prev, self.prev_end, self.prev_rgb = (t, frame), t + shows, None
        while gap and not self.done and self.samples[self.i] < t:
            self._assign()

    def _assign(self) -> None:
        self.out[self.i] = self._rgb()
        self.times[self.i] = self.prev[0]
        self.i += 1

    def result(self, name: str, claimed_end: float | None, data_end: float):
        """claimed_end: where the stream says it ends; data_end: where the packets read end
        (a stream that stops short is truncated only if the file's data does too: Matroska
        states no stream durations, FFmpeg gives each the file's, so a video track shorter
        than the audio would look truncated)."""
        if self.prev is None:
            why = f" ({self.problem})" if self.problem else ""
            raise MediaError(name, f"video stream yielded no decodable frames in the window{why}")
        if not self.done:
            last = self.prev[0]
            shown_until = self.prev_end + GAP_TOLERANCE_S
            if (claimed_end is not None and self.samples[-1] > shown_until and shown_until < claimed_end
                    and data_end + GAP_TOLERANCE_S < claimed_end):
                why = f"; {self.problem}" if self.problem else ""
                raise MediaError(name, f"truncated or corrupt video: frames stop at {last:.3f} s but the stream "
                                       f"claims {claimed_end:.3f} s{why}")
            while not self.done:
                self._assign()
        # the last frame decoded stops showing before the window, or the first comes after it
        if self.prev_end <= self.start + 1e-6 or np.all(self.times >= self.end - 1e-6):
            return None, np.zeros(0), self.rotation
        return np.stack(self.out), self.times, self.rotation


class AudioWindow:
    """Resamples decoded audio to mono float32 and keeps exactly [start, end)."""

    def __init__(self, start: float, end: float, rate: int, t0: float, time_base):
        self.time_base = float(time_base) if time_base else None  # frame pts unit
        self.start, self.end, self.rate, self.t0 = start, end, rate, t0
        self.resampler = self._new_resampler()
        self.input_format = None  # (sample format, layout, rate) the resampler was set up for
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None  # time of the first resampled sample
        self.n = 0  # resampled samples so far
        self.last_in_end = None  # end time of the last decoded input frame
        self.done = False
        self.problem = None
        self.packets = 0  # audio packets demuxed that reach into the window
        self.taken = 0  # window samples handed out by take() (streaming)
        self.dropped = 0  # resampled samples removed from the front of self.chunks by take()

    def _new_resampler(self):
        import av

        return av.AudioResampler(format="flt", layout="mono", rate=self.rate)

    def note(self, problem: str) -> None:
        self.problem = problem

    def add_packet(self, end: float | None) -> None:
        """An audio packet was demuxed that ends at `end` seconds (None: untimed)."""
        if end is None or end > self.start - 0.05:
            self.packets += 1

    def add(self, frames) -> None:
        for f in frames:
            if f.samples == 0 or f.sample_rate == 0:
                continue
            if f.pts is not None and self.time_base:
                t = f.pts * self.time_base - self.t0
            else:
                t = self.last_in_end or 0.0
            f_end = t + f.samples / f.sample_rate
            if f_end <= self.start - 0.05:  # wholly before the window (after a backward seek)
                continue
            if self.first_time is None:
                self.first_time = t
            elif t - self.last_in_end > MAX_AUDIO_GAP_S:
                self.note(f"an audio timestamp jumps {t - self.last_in_end:.0f} s ahead (corrupt): read on as "
                          "contiguous")
            elif t - self.last_in_end > AUDIO_GAP_S:
                # a dropout (lost packets, a broadcast glitch): the timestamps go on, so keep
                # what follows in place with silence, as players do
                self._restart_resampler()
                missing = round((min(t, self.end) - self.first_time) * self.rate) - self.n
                if missing > 0:
                    self.chunks.append(np.zeros(missing, np.float32))
                    self.n += missing
            self.last_in_end = f_end
            f.pts = None  # let the resampler run on sample count alone; we track time ourselves
            fmt = (f.format.name, f.layout.name, f.sample_rate)
            if fmt != self.input_format:
                # the stream changed rate or channels mid-way (joined recordings, broadcast
                # captures): a resampler takes one input format, so drain it and start another
                if self.input_format is not None:
                    self._restart_resampler()
                self.input_format = fmt
            self._take(self.resampler.resample(f))
            if f_end >= self.end:
                self.done = True
                return

    def _restart_resampler(self) -> None:
        """Drain the resampler into the output and start a fresh one (its input may change)."""
        self._take(self.resampler.resample(None))
        self.resampler = self._new_resampler()
        self.input_format = None

    def _take(self, out) -> None:
        for g in out:
            a = g.to_ndarray().reshape(-1)
            self.chunks.append(a)
            self.n += len(a)

    def finish(self) -> None:
        if self.first_time is not None:
            self._take(self.resampler.resample(None))

    def take(self, n: int | None) -> np.ndarray | None:
        """Streaming (stream_audio): the next n samples of [start, end) once that many are
        decoded (else None, nothing taken); n None: all that remain (call after finish()).
        Removes them from the buffer, so memory stays at about one chunk."""
        if self.first_time is None:
            return None
        # resampled sample k is at first_time + k / rate; window sample j at start + j / rate
        i0 = int(round((self.start - self.first_time) * self.rate))
        left = int(round((self.end - self.start) * self.rate)) - self.taken if math.isfinite(self.end) else math.inf
        a = self.taken + i0  # resampled index of the next window sample (< 0: silence before the audio)
        if n is None:
            m = max(0, min(self.n - a, left))
        elif self.n - a >= n and left >= n:
            m = n
        else:  # not decoded yet, or the window's last (shorter) piece: take(None) hands it out
            return None
        buf = np.concatenate(self.chunks) if len(self.chunks) != 1 else self.chunks[0]  # [dropped, n)
        lo = max(a, self.dropped) - self.dropped
        b = a + m
        out = buf[lo:max(lo, b - self.dropped)]
        if a < 0:  # the audio starts after the window start
            out = np.concatenate([np.zeros(min(-a, m), np.float32), out])
        if b > self.dropped:
            self.chunks = [buf[b - self.dropped:].copy()]  # a copy: a view would keep all of buf alive
            self.dropped = b
        self.taken += m
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)

    def timed_chunks(self, n: int | None) -> Iterator[tuple[float, np.ndarray]]:
        """Streaming (stream_audio): take(n) for as long as it hands samples out, each chunk as
        (t, wave): t its first sample's time in seconds from the source start, wave float32 [n].
        n None: all that remain, as one last chunk (none when nothing remains; after finish())."""
        while (wave := self.take(n)) is not None:
            if n is not None or len(wave):
                yield self.start + self.taken / self.rate - len(wave) / self.rate, wave
            if n is None:  # take(None) hands out everything at once
                return

    def result(self, name: str, claimed_end: float | None, data_end: float) -> np.ndarray | None:
        """claimed_end, data_end: as for VideoSampler.result."""
        want = int(round((self.end - self.start) * self.rate))
        if self.first_time is None:
            if claimed_end is not None and claimed_end <= self.start + GAP_TOLERANCE_S:
                return None  # the audio stream ends before this window
            if self.packets == 0 and self.problem is None:
                return None  # no packet of the stream reaches the window (it ended, or holds none)
            why = f" ({self.problem})" if self.problem else ""
            raise MediaError(name, f"audio stream yielded no decodable samples in the window{why}")
        buf = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        i0 = int(round((self.start - self.first_time) * self.rate))
        if i0 < 0:  # audio starts after the window start: silence before it
            buf = np.concatenate([np.zeros(-i0, np.float32), buf])
            i0 = 0
        got_end = self.start + (len(buf) - i0) / self.rate
        goal = min(self.end, claimed_end) if claimed_end is not None else self.end
        if got_end < goal - GAP_TOLERANCE_S and data_end + GAP_TOLERANCE_S < goal:
            why = f"; {self.problem}" if self.problem else ""
            raise MediaError(name, f"truncated or corrupt audio: samples stop at {got_end:.3f} s but the stream "
                                   f"claims {goal:.3f} s{why}")
        out = buf[i0:i0 + want]
        return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)
