"""PyAV decoding of one clip: T sampled RGB frames + 16 kHz mono audio of a time window.

`decode_clip(source, start, end, config)` -> `Clip`. Sources: a local path, bytes, or a
seekable binary file object. No ffmpeg subprocess. Bytes and file objects (uploads,
remote files) may not make FFmpeg open other files: a playlist or concat script among
them fails (see _open).

Frames: T sample times at the centres of T equal sub-intervals of [start, end)
(s_i = start + (i + 0.5) * (end - start) / T); each takes the frame *showing* at that
time (the last frame whose presentation time is <= s_i, or the first frame when s_i
precedes it), so clips with fewer than T frames repeat frames. Times come from frame
pts (variable frame rate safe: a frame shows until the next one, however long a
screen recording holds it), relative to the container's start time; raw elementary
streams (.h264, .hevc), which have none, are timed by counting frames. A window the
video stream shows nothing of (it ends before the window or starts after it) has no
frames, as one without audio has no audio. The video is the largest video stream (a
preview track may come first); a picture attached to an audio file (cover art) is not video.
Audio: every channel mixed to mono, resampled to `sample_rate` (following any change of
rate or channels mid-stream), trimmed to [start, end) to the sample; silence where the
audio starts after the window start and where packets are missing while the timestamps
go on (dropouts), and it ends where the audio stream ends. A stream that stops before
its stated end is "truncated" only if the file's data stops there too.

Speed (single-threaded decoding of a 720p clip is the usual bottleneck):
- only the sampled frames are converted to RGB, resized straight to H x W by swscale
  (area averaging: anti-aliased, and ~5x cheaper than its default bilinear here);
- demuxing buffers one GOP (keyframe to keyframe) of video packets and decodes it only
  if a sample time falls inside it, stopping inside the GOP once past its last sample:
  with dense keyframes (1-2 s GOPs) long windows decode a fraction of their frames.
  A GOP starts only where decoding can start cleanly (`clean_start`: not at the
  recovery points of intra-refresh H.264, nor at the placeholders packed-bitstream
  MPEG-4 AVIs flag), and a window is sought to such a keyframe, or read from the start;
- when the window holds >= 4 frames per sample, non-reference frames are not decoded
  (`skip_frame="NONREF"`): a sample then takes the nearest decoded frame (at most a
  couple of frames off; `frame_times` reports the frame actually used; a run of more
  than sampling.MAX_SKIPPED_RUN skipped frames around a sample, e.g. x264 --bframes 16, and the
  clip is decoded again without skipping). When the
  stream is x264 output with ref=1 (read from the SEI x264 writes in its first frame),
  P-frames can only reference the previous I/P frame, never a B-frame (x264 orders P
  reference lists by distance), so *all* B-frames, b-pyramid references included, are
  skipped (`"BIDIR"`) with output identical to a full decode. Other encoders, and x264
  with ref > 1, let P-frames reference B-frames: skipping those drifts (measured ~41 dB
  on a 5 s x264 --preset medium clip), so they keep NONREF;
- frames between the keyframe a window is decoded from and the window itself serve
  only as references: non-reference ones are skipped whatever the window's density;
- skipping the deblocking filter (`skip_loop_filter`) would save 20-30%, but the error
  it leaves in reference frames accumulates until the next keyframe (down to ~20-25 dB
  within a second on a noisy single-keyframe clip): not used;
- decoding stops once the last sample and the end of the window's audio are reached;
- the file is opened without FFmpeg's probe decode (`_HEADER_PROBE`), which would decode
  the first keyframe only to learn what mp4/mkv/webm/mov headers already say.

Every failure (no stream, empty, not media, truncated, corrupt, limits, timeout, and any
exception PyAV or numpy raise) becomes a `MediaError` naming the source.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

import numpy as np

from mmsa_ray.bitstream import bidir_safe, clean_start
from mmsa_ray.durations import estimated_duration, media_duration, stream_end
from mmsa_ray.sampling import AudioWindow, SkipTooCoarse, VideoSampler

_NONREF_FRAMES_PER_SAMPLE = 4  # skip non-reference frames when the window has this many frames per sample
_MAX_FPS = 1000.0  # a stated rate above this is a time-base artefact (DV in .dv states 60000), not a frame rate
# Opening a file normally (avformat_find_stream_info) decodes its first frames to learn codec
# parameters that mp4/mkv/webm/mov headers already state; for 720p H.264 that is a keyframe
# decode (~20 ms, a fifth of a clip) which our own decoder then repeats. Open with decoding
# switched off during the probe; _NeedsFullProbe falls back to the normal open when that
# left out what decoding needs. (Applies only to formats that list their streams in the
# header; others, e.g. MPEG-TS, get the full probe anyway.)
_HEADER_PROBE = {"skip_frame": "all"}


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
    duration: float  # whole source duration, seconds (raw audio streams: may be FFmpeg's estimate unless the window ran to the end)
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


def decode_clip(
    source: str | os.PathLike | bytes | BinaryIO, start: float | None = None, end: float | None = None,
    config: DecodeConfig | None = None,
) -> Clip:
    """Decode T frames and the audio of [start, end) (default: the whole source).

    Returns a Clip (frames uint8 [T,3,H,W] RGB or None; audio float32 [N] or None).
    Raises MediaError, and only MediaError, for anything that goes wrong.
    """
    config = config or DecodeConfig()
    name = _describe(source)
    try:
        return _decode(source, name, start, end, config)
    except MediaError:
        raise
    except Exception as e:  # PyAV errors, ValueError, OverflowError, MemoryError, ...
        raise MediaError(name, f"cannot decode ({type(e).__name__}: {e})") from e


def _describe(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes: {len(source)} B>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else f"<{type(source).__name__}>"


def probe_duration(source: str | os.PathLike | bytes | BinaryIO, config: DecodeConfig | None = None) -> float:
    """Seconds of media in `source`, measured as decode_clip measures `Clip.duration`, from
    the headers (raw audio streams and header-less files: a packet scan), decoding nothing.
    Raises MediaError, and only MediaError."""
    config = config or DecodeConfig()
    name = _describe(source)
    try:
        deadline = time.monotonic() + config.timeout_s
        with _open(_input(source, name), name, config, _HEADER_PROBE) as container:
            vs, aus = _streams(container, name)
            t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
            return media_duration(container, vs, aus, t0, deadline, name, None)[0]
    except MediaError:
        raise
    except Exception as e:  # PyAV errors, ValueError, OverflowError, MemoryError, ...
        raise MediaError(name, f"cannot read the duration ({type(e).__name__}: {e})") from e


def stream_audio(
    source: str | os.PathLike | bytes | BinaryIO, start: float | None = None, end: float | None = None,
    chunk_s: float = 300.0, config: DecodeConfig | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """The audio of [start, end) (default: the whole source) as consecutive chunks, in
    memory bounded by one chunk: yields (t, wave), wave float32 [N] mono in [-1, 1] at
    config.sample_rate, t its first sample's time in seconds from the start of the source.
    Every chunk but the last holds round(chunk_s * sample_rate) samples; together they are
    what decode_clip's audio of the same window would be (mixing, resampling, silence for
    dropouts and before a late audio start), without its max_duration_s limit; with no
    `end`, up to the audio stream's own end (decode_clip stops at the container's stated
    duration, which a longer video or shorter audio track sets). One pass,
    audio packets only (video is demuxed away, never decoded). A stream that ends early
    just ends (no "truncated" check: what was readable is returned).

    Raises MediaError, and only MediaError: before the first chunk when the source cannot
    be opened or has no audio stream; config.timeout_s bounds the wall time of each chunk.
    """
    config = config or DecodeConfig()
    name = _describe(source)
    if not chunk_s > 0:
        raise MediaError(name, f"chunk_s must be > 0, got {chunk_s}")
    try:
        yield from _stream_audio(source, name, start, end, chunk_s, config)
    except MediaError:
        raise
    except Exception as e:  # PyAV errors, ValueError, OverflowError, MemoryError, ...
        raise MediaError(name, f"cannot decode audio ({type(e).__name__}: {e})") from e


def _stream_audio(source, name: str, start, end, chunk_s: float, config: DecodeConfig):
    import av

    s = 0.0 if start is None else float(start)
    e = math.inf if end is None else float(end)
    if not math.isfinite(s) or math.isnan(e) or s < 0 or e <= s:
        raise MediaError(name, f"invalid window [{start}, {end}): need 0 <= start < end")
    with _open(_input(source, name), name, config, _HEADER_PROBE) as container:
        _, aus = _streams(container, name)
        if aus is None:
            raise MediaError(name, "no audio stream")
        aus.codec_context.thread_count = 1
        t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
        if s > 0 and not _unreliable_seek(aus):
            try:
                _seek(container, None, t0 + s - _AUDIO_PREROLL_S, t0)
            except _ReadFromStart:  # FFmpeg refused the seek (damaged index): read from the start
                pass
        audio = AudioWindow(s, e, config.sample_rate, t0, aus.time_base)
        n = int(round(chunk_s * config.sample_rate))
        errors = count = 0
        deadline = time.monotonic() + config.timeout_s
        packets = container.demux(aus)
        while not audio.done:
            if time.monotonic() > deadline:
                raise MediaError(name, f"timed out after {config.timeout_s:g} s (timeout_s) decoding one "
                                       f"{chunk_s:g} s chunk of audio")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.ExitError as ex:
                raise MediaError(name, f"timed out after {config.timeout_s:g} s (timeout_s) while decoding") from ex
            except av.error.FFmpegError as ex:  # damaged from here on: keep what was read
                audio.note(f"demuxing stopped early ({ex.strerror or ex})")
                break
            if packet.size == 0:
                continue
            count += 1
            pts_end = None
            if packet.pts is not None and packet.time_base is not None:
                pts_end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - t0
            audio.add_packet(pts_end)
            try:
                audio.add(aus.codec_context.decode(packet))
            except av.error.FFmpegError:
                errors += 1
            while (wave := audio.take(n)) is not None:
                yield s + audio.taken / config.sample_rate - len(wave) / config.sample_rate, wave
                deadline = time.monotonic() + config.timeout_s  # the consumer's time is not ours
        if not audio.done:
            try:
                audio.add(aus.codec_context.decode(None))
            except av.error.FFmpegError:
                errors += 1
        audio.finish()
        if errors > max(2, count // 5):
            raise MediaError(name, f"corrupt audio stream: {min(errors, count)} of {count} packets failed to decode")
        if audio.first_time is None:
            why = f" ({audio.problem})" if audio.problem else ""
            where = f" at or after {s:g} s" if s > 0 else ""
            raise MediaError(name, f"audio stream yielded no decodable samples{where}{why}")
        while (wave := audio.take(n)) is not None:
            yield s + audio.taken / config.sample_rate - len(wave) / config.sample_rate, wave
        wave = audio.take(None)
        if wave is not None and len(wave):
            yield s + audio.taken / config.sample_rate - len(wave) / config.sample_rate, wave


def _input(source, name: str):
    """bytes -> BytesIO; a path is checked to be a non-empty file; file objects pass through."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise MediaError(name, "empty input (0 bytes)")
        return io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            if os.path.isdir(path):
                raise MediaError(name, "is a directory, not a media file")
            if os.path.exists(path):  # a FIFO, socket or device: reading it may never end
                raise MediaError(name, "not a regular file (a pipe, socket or device)")
            raise MediaError(name, "broken symbolic link" if os.path.islink(path) else "no such file")
        if os.path.getsize(path) == 0:
            raise MediaError(name, "empty file (0 bytes)")
        return path
    return source


def _decode(source, name: str, start, end, config: DecodeConfig) -> Clip:
    deadline = time.monotonic() + config.timeout_s
    if config.num_frames < 1 or config.height < 1 or config.width < 1 or config.sample_rate < 1:
        raise MediaError(name, f"invalid DecodeConfig {config}")
    source = _input(source, name)
    rewind = source.tell() if hasattr(source, "tell") else None
    header_probe = skip = seek = True
    for _ in range(4):  # each retry turns one of the three off for good
        try:
            with _open(source, name, config, _HEADER_PROBE if header_probe else None) as container:
                return _decode_container(container, name, start, end, config, deadline,
                                         header_probe=header_probe, skip=skip, seek=seek)
        except _NeedsFullProbe:
            header_probe = False
        except SkipTooCoarse:
            skip = False
        except _ReadFromStart:
            seek = False
        if rewind is not None:
            source.seek(rewind)
    raise MediaError(name, "cannot decode: opened four times without a usable pass")


class _NeedsFullProbe(Exception):
    """The header-only probe left out something decoding needs: open again with FFmpeg's full probe."""


class _ReadFromStart(Exception):
    """No clean keyframe precedes the window: open again and read from the start of the file.

    (Seeking back to the start is not the same: a seek by time goes through the video's
    index, whose first entry is its first keyframe, so audio before a late-starting video
    is never read, and a seek on the audio stream can land past the video's first keyframe.)"""


def _open(source, name: str, config: DecodeConfig, options: dict[str, str] | None):
    import av

    if not isinstance(source, str):
        # Bytes and file objects are uploads and remote files: a playlist or concat script
        # among them (HLS, ffconcat) must not make FFmpeg open files on this machine. A
        # whitelist naming no real protocol forbids every nested open; the source itself
        # is read through Python, not a protocol.
        options = {**(options or {}), "protocol_whitelist": "none"}
    try:
        return av.open(source, "r", options=options, timeout=(config.timeout_s, config.timeout_s),
                       metadata_errors="ignore")
    except av.error.ExitError as e:  # the interrupt callback fired: timeout_s ran out while opening
        raise MediaError(name, f"timed out after {config.timeout_s:g} s (timeout_s) while opening") from e
    except av.error.FFmpegError as e:
        raise MediaError(name, f"not a readable media file ({e.strerror or e})") from e


def _usable(stream) -> bool:
    return stream is not None and stream.codec_context is not None


def _cover_art(stream) -> bool:
    """A picture attached to an audio file (album art in mp3/m4a/flac), not video."""
    from av.stream import Disposition

    return bool(stream.disposition & (Disposition.attached_pic | Disposition.timed_thumbnails))


def _streams(container, name: str):
    """(the video stream, the audio stream): the largest usable video and the first usable audio,
    None when absent; MediaError when neither."""
    videos = [s for s in container.streams.video if _usable(s) and not _cover_art(s)]
    # the main picture, as players choose it: the largest (a thumbnail or preview track may come first)
    vs = max(videos, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0), default=None)
    aus = next((s for s in container.streams.audio if _usable(s)), None)
    if vs is None and aus is None:
        found = ", ".join(s.type + (" (cover art)" if _cover_art(s) else "") for s in container.streams) or "none"
        raise MediaError(name, f"no decodable video or audio stream (streams: {found})")
    return vs, aus


def _decode_container(container, name, start, end, config: DecodeConfig, deadline: float,
                      header_probe: bool, skip: bool = True, seek: bool = True) -> Clip:
    """skip: whether frames the samples do not need may be skipped (see SkipTooCoarse);
    seek: whether to seek to the window (see _ReadFromStart)."""
    vs, aus = _streams(container, name)
    rotation = 0
    if vs is not None:
        w, h = vs.codec_context.width, vs.codec_context.height
        if not (w and h) and header_probe:
            raise _NeedsFullProbe
        if not (w and h):
            raise MediaError(name, "video stream has no frame size (truncated or corrupt header)")
        if w * h > config.max_pixels:
            raise MediaError(name, f"video frame {w}x{h} = {w * h} pixels exceeds max_pixels={config.max_pixels}")

    t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
    window_end = None if end is None else float(end)
    duration, untimed_period = media_duration(container, vs, aus, t0, deadline, name, window_end)
    timed = untimed_period is None
    # --- the window
    s = 0.0 if start is None else float(start)
    e = duration if end is None else float(end)
    if not (math.isfinite(s) and math.isfinite(e)):
        raise MediaError(name, f"window [{start}, {end}) is not finite")
    if start is None and end is None and duration > config.max_duration_s:
        raise MediaError(name, f"source is {duration:.1f} s long, over max_duration_s={config.max_duration_s:g}; "
                               f"pass a window (start, end)")
    if s < 0 or e <= s:
        raise MediaError(name, f"invalid window [{s:g}, {e:g}): need 0 <= start < end")
    if s >= duration:
        raise MediaError(name, f"window start {s:g} s is at or past the end of the source ({duration:.3f} s)")
    e = min(e, duration)
    if e - s > config.max_duration_s:
        raise MediaError(name, f"window [{s:g}, {e:g}) is {e - s:.1f} s long, over max_duration_s={config.max_duration_s:g}")

    T = config.num_frames
    samples = s + (np.arange(T) + 0.5) * (e - s) / T  # seconds, float64 [T]
    fps = None
    window_skip = "DEFAULT"
    if vs is not None:
        rate = next((r for r in (vs.average_rate, vs.guessed_rate, vs.base_rate) if r and r <= _MAX_FPS), None)
        fps = float(rate) if rate and timed else (1.0 / untimed_period if untimed_period else None)
        cc = vs.codec_context
        cc.thread_count = config.threads
        cc.thread_type = "AUTO"
        v_end = stream_end(vs, t0)
        shown = (min(e, v_end) if v_end else e) - s  # seconds of video in the window (audio may run longer)
        if skip and fps and shown * fps >= _NONREF_FRAMES_PER_SAMPLE * T and timed:
            window_skip = "NONREF"  # _demux may upgrade this to BIDIR after reading x264's SEI
        # frames before the window matter only as references (see _LEAD_IN_S); frames
        # timed by counting must all be decoded
        cc.skip_frame = "NONREF" if s > 0 and timed else window_skip
    if aus is not None:
        aus.codec_context.thread_count = 1
    reorder_known = vs is not None and vs.codec_context.has_b_frames

    # audio decoders need a little before the window to settle (MDCT overlap, Opus pre-roll)
    preroll = _AUDIO_PREROLL_S if aus is not None else 0.0
    seek = seek and s > 0 and timed and not (vs is None and _unreliable_seek(aus))
    if seek:
        _seek(container, vs, t0 + s - preroll, t0)
    period = 1.0 / fps if fps else 1e-3
    video = VideoSampler(samples, config, t0, vs.time_base, vs.codec_context, s, e, period) if vs is not None else None
    audio = AudioWindow(s, e, config.sample_rate, t0, aus.time_base) if aus is not None else None
    lead_in_end = s - _LEAD_IN_S if s > 0 else None
    data_end = _demux(container, vs, aus, video, audio, deadline, name, config, seek, window_skip, lead_in_end)
    if header_probe and vs is not None and not reorder_known and vs.codec_context.has_b_frames:
        # the stream reorders frames but its header did not say so: the decoder found out
        # mid-stream and may have dropped frames before that; the full probe measures it first
        raise _NeedsFullProbe

    def claimed_end(stream) -> float | None:
        # a stream's end as its header states it, unless that is only a bit-rate estimate
        return duration if estimated_duration(container) else stream_end(stream, t0)

    frames = frame_times = None
    width = height = None
    if video is not None:
        frames, frame_times, rotation = video.result(name, claimed_end(vs), data_end)
        width, height = vs.codec_context.width, vs.codec_context.height
        if rotation % 180:
            width, height = height, width
    wave = audio.result(name, claimed_end(aus), data_end) if audio is not None else None
    if frames is None and wave is None:
        raise MediaError(name, f"neither video nor audio in the window [{s:g}, {e:g}) of {duration:.3f} s")
    return Clip(
        source=name, frames=frames, audio=wave, sample_rate=config.sample_rate, start=s, end=e,
        duration=duration, fps=fps, width=width, height=height,
        frame_times=frame_times if frame_times is not None else np.zeros(0),
    )


# Before a window starts, frames are decoded only as references of later ones, so non-reference
# frames are skipped up to this many seconds before the window start; from there on the
# window's own rule applies (a frame shown just before the start may be the one a first
# sample takes, unless a variable-frame-rate gap longer than this precedes the window).
_LEAD_IN_S = 0.5
_SEEK_BACKOFF_S = (0.0, 1.0, 3.0, 10.0, 30.0, 120.0)  # how far before the window to seek, tried in turn
_AUDIO_PREROLL_S = 0.2  # audio decoded before a window so that its first samples are settled (Opus needs 80 ms)


def _seek(container, vs, t: float, t0: float) -> None:
    """Position the demuxer so decoding can start at or before t seconds (container time;
    t0: the container's start time, which MPEG-TS makes negative after a timestamp wrap).

    mp4/mkv/webm/avi seek through their index to the keyframe before t. MPEG-TS/PS and
    index-less files seek by bisecting on timestamps and land on any packet, often a
    P-frame that cannot be decoded; there the seek point moves back until a clean
    keyframe (clean_start) at or before t follows it, and the video packets before that
    keyframe are to be dropped. Raises _ReadFromStart when no clean keyframe comes before t,
    or FFmpeg refuses the seek (a damaged index).
    """
    import av

    # AVI and FLV refuse negative targets; MPEG-TS starts below 0 after a timestamp wrap, and
    # gets to its first byte only with a target below its start
    lowest = 0.0 if t0 >= 0 else t0 - 1.0
    try:
        if vs is None:
            container.seek(int(round(max(lowest, t) * 1e6)), backward=True)
            return
        for back in _SEEK_BACKOFF_S:
            target = int(round(max(lowest, t - back) * 1e6))
            container.seek(target, backward=True)
            key_time = _first_clean_key_time(container, vs, t)
            if key_time is not None and key_time <= t:
                container.seek(target, backward=True)  # the same point again, now to read from
                return
            if t - back < t0:  # tried from before the start
                break
    except av.error.FFmpegError:  # a refused seek (a damaged index): the start is always a way in
        pass
    raise _ReadFromStart


def _first_clean_key_time(container, vs, t: float) -> float | None:
    """Demuxing on from the current position: the time of the first video packet decoding can
    start at (clean_start), or None if none comes before packets decoded after t."""
    for p in container.demux(vs):  # stops early: only packets up to t are read
        if not p.size or p.time_base is None:
            continue
        if p.is_keyframe and clean_start(vs, p):
            return float(p.pts * p.time_base) if p.pts is not None else None
        ts = p.dts if p.dts is not None else p.pts  # Matroska may leave dts unset
        if ts is not None and float(ts * p.time_base) > t:
            return None
    return None


def _unreliable_seek(aus) -> bool:
    """Audio whose seeks land at the wrong time: ADPCM/G.72x in wav (FFmpeg seeks by a header
    byte rate that FFmpeg 5.1 itself writes wrong). Cheap to decode from the start."""
    return aus is not None and aus.codec_context.name.startswith(("adpcm", "g72"))


def _demux(container, vs, aus, video, audio, deadline, name, config, from_keyframe: bool,
           window_skip: str, lead_in_end: float | None) -> float:
    """One pass over the packets from the seek point, feeding the video sampler and audio window.
    Returns where the packets read end (seconds after the container start; where the file's
    data ends when a stream was not done before it).

    from_keyframe: drop the video packets before the first clean keyframe (after _seek).
    window_skip: the video decoder's skip_frame from the first packet shown at or after
    lead_in_end (seconds); before that it skips what the set-up chose (non-reference frames).
    """
    import av

    streams = [x for x in (vs, aus) if x is not None]
    gop: list = []  # video packets since the last keyframe, in decode order
    errors = {"video": 0, "audio": 0}
    counts = {"video": 0, "audio": 0}
    t0 = (video or audio).t0
    time_base = {x.index: float(x.time_base) for x in streams if x.time_base}
    data_end = -math.inf

    def decode_video(packets, until: float | None) -> None:
        # decode until every sample <= until is assigned (the frame after it has been seen)
        nonlocal lead_in_end
        for p in packets:
            if video.done or (until is not None and video.next_sample > until):
                return
            if lead_in_end is not None and (p.pts is None or not video.time_base
                                            or p.pts * video.time_base - video.t0 >= lead_in_end):
                vs.codec_context.skip_frame = window_skip  # the window: decode what it needs
                lead_in_end = None
            try:
                frames = vs.codec_context.decode(p)
            except av.error.FFmpegError:
                errors["video"] += 1
                continue
            for f in frames:
                video.add(f)

    def flush_gop(next_start: float | None) -> None:
        # decode the buffered GOP only if a pending sample falls before the next keyframe
        if gop and not video.done and (next_start is None or video.next_sample < next_start):
            inside = video.samples[video.samples < next_start] if next_start is not None else video.samples
            decode_video(gop, float(inside[-1]) if next_start is not None else None)
        gop.clear()

    packets = container.demux(streams)
    while True:
        if time.monotonic() > deadline:
            raise MediaError(name, f"timed out after {config.timeout_s:g} s (timeout_s) while decoding")
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.ExitError as e:
            raise MediaError(name, f"timed out after {config.timeout_s:g} s (timeout_s) while decoding") from e
        except av.error.FFmpegError as e:  # truncated / damaged container: keep what was read
            video_done = video is None or video.done
            if not video_done or (audio is not None and not audio.done):
                video and video.note(f"demuxing stopped early ({e.strerror or e})")
                audio and audio.note(f"demuxing stopped early ({e.strerror or e})")
            break
        if packet.size == 0:
            continue
        packet_end = None  # seconds after the container start, when the packet has a timestamp
        if packet.pts is not None and packet.stream_index in time_base:
            packet_end = (packet.pts + (packet.duration or 0)) * time_base[packet.stream_index] - t0
            data_end = max(data_end, packet_end)
        if vs is not None and packet.stream_index == vs.index:
            if video.done:
                if audio is None or audio.done:
                    break
                continue
            clean_key = packet.is_keyframe and clean_start(vs, packet)
            if from_keyframe and not clean_key:
                continue
            from_keyframe = False
            counts["video"] += 1
            if counts["video"] == 1 and bidir_safe(vs, packet):
                vs.codec_context.skip_frame = "BIDIR"
                if window_skip == "NONREF":
                    window_skip = "BIDIR"
            if clean_key:
                flush_gop(float(packet.pts * packet.time_base) - video.t0 if packet.pts is not None else None)
            video.add_packet(packet)
            gop.append(packet)
        elif aus is not None and packet.stream_index == aus.index:
            if audio.done:
                if video is None or video.done:
                    break
                continue
            counts["audio"] += 1
            audio.add_packet(packet_end)
            try:
                audio.add(aus.codec_context.decode(packet))
            except av.error.FFmpegError:
                errors["audio"] += 1
    if video is not None:
        flush_gop(None)
        if not video.done:
            try:
                for f in vs.codec_context.decode(None):
                    video.add(f)
            except av.error.FFmpegError:
                errors["video"] += 1
    if audio is not None:
        try:
            audio.add(aus.codec_context.decode(None))
        except av.error.FFmpegError:
            errors["audio"] += 1
        audio.finish()
    for kind in ("video", "audio"):
        if errors[kind] > max(2, counts[kind] // 5):
            failed = min(errors[kind], counts[kind])  # (a failed drain at the end counts as one more)
            raise MediaError(name, f"corrupt {kind} stream: {failed} of {counts[kind]} packets failed to decode")
    return data_end


