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
- the file is opened without FFmpeg's probe decode (`HEADER_PROBE_OPTIONS`), which would
  decode the first keyframe only to learn what mp4/mkv/webm/mov headers already say.

Every failure (no stream, empty, not media, truncated, corrupt, limits, timeout, and any
exception PyAV or numpy raise) becomes a `MediaError` naming the source.

Public: `decode_clip`, `probe_duration`, `stream_audio`, and `HEADER_PROBE_OPTIONS` (how
sources are opened; None: with FFmpeg's full probe). Where a window's decoding starts is
bitstream.seek_to_keyframe; the pass over its packets is demux.Demuxer.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from mmsa_ray.media.bitstream import ReadFromStart, seek_to_keyframe
from mmsa_ray.media.demux import Demuxer, raise_if_corrupt
from mmsa_ray.media.durations import PacketReader, estimated_duration, media_duration, stream_end
from mmsa_ray.media.sampling import AudioWindow, SkipTooCoarse, VideoSampler
from mmsa_ray.media.types import Clip, DecodeConfig, MediaError

__all__ = ["HEADER_PROBE_OPTIONS", "decode_clip", "probe_duration", "stream_audio"]

_NONREF_FRAMES_PER_SAMPLE = 4  # skip non-reference frames when the window has this many frames per sample
_MAX_FPS = 1000.0  # a stated rate above this is a time-base artefact (DV in .dv states 60000), not a frame rate
# Opening a file normally (avformat_find_stream_info) decodes its first frames to learn codec
# parameters that mp4/mkv/webm/mov headers already state; for 720p H.264 that is a keyframe
# decode (~20 ms, a fifth of a clip) which our own decoder then repeats. Open with decoding
# switched off during the probe; _NeedsFullProbe falls back to the normal open when that
# left out what decoding needs. (Applies only to formats that list their streams in the
# header; others, e.g. MPEG-TS, get the full probe anyway.) Read at each open: None makes
# every open a full probe.
HEADER_PROBE_OPTIONS: dict[str, str] | None = {"skip_frame": "all"}


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
        with _open(_input(source, name), name, config, HEADER_PROBE_OPTIONS) as container:
            vs, aus = _streams(container, name)
            return media_duration(container, vs, aus, _start_time(container), deadline, name, None)[0]
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
    if not (math.isfinite(chunk_s) and round(chunk_s * config.sample_rate) >= 1):  # an empty chunk: no end
        raise MediaError(name, f"chunk_s must be at least one sample (1/{config.sample_rate} s), got {chunk_s}")
    try:
        yield from _stream_audio(source, name, start, end, chunk_s, config)
    except MediaError:
        raise
    except Exception as e:  # PyAV errors, ValueError, OverflowError, MemoryError, ...
        raise MediaError(name, f"cannot decode audio ({type(e).__name__}: {e})") from e


def _stream_audio(source, name: str, start, end, chunk_s: float,
                  config: DecodeConfig) -> Iterator[tuple[float, np.ndarray]]:
    """stream_audio's work: open, find the audio stream and seek to the window (seconds)."""
    s = 0.0 if start is None else float(start)
    e = math.inf if end is None else float(end)
    if not math.isfinite(s) or math.isnan(e) or s < 0 or e <= s:
        raise MediaError(name, f"invalid window [{start}, {end}): need 0 <= start < end")
    with _open(_input(source, name), name, config, HEADER_PROBE_OPTIONS) as container:
        _, aus = _streams(container, name)
        if aus is None:
            raise MediaError(name, "no audio stream")
        aus.codec_context.thread_count = 1
        t0 = _start_time(container)
        if s > 0 and not _unreliable_seek(aus):
            try:
                seek_to_keyframe(container, None, t0 + s - _AUDIO_PREROLL_S, t0)
            except ReadFromStart:  # FFmpeg refused the seek (damaged index): read from the start
                pass
        audio = AudioWindow(s, e, config.sample_rate, t0, aus.time_base)
        yield from _audio_chunks(container, aus, audio, name, chunk_s, config)


def _audio_chunks(container, aus, audio: AudioWindow, name: str, chunk_s: float,
                  config: DecodeConfig) -> Iterator[tuple[float, np.ndarray]]:
    """Demuxes and decodes `aus` into `audio` from the current position, yielding (t, wave) as
    stream_audio does: each chunk of round(chunk_s * sample_rate) samples once decoded, then the rest."""
    import av

    n = int(round(chunk_s * config.sample_rate))
    errors = count = 0  # audio packets that failed to decode, of those fed to the decoder
    timed_out = f"timed out after {config.timeout_s:g} s (timeout_s)"
    packets = PacketReader(container, aus, time.monotonic() + config.timeout_s, name,
                           f"{timed_out} decoding one {chunk_s:g} s chunk of audio", f"{timed_out} while decoding")
    for packet in packets:
        if packet.size == 0:
            continue
        count += 1
        pts_end = None  # seconds after the container start
        if packet.pts is not None and packet.time_base is not None:
            pts_end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - audio.t0
        audio.add_packet(pts_end)
        try:
            audio.add(aus.codec_context.decode(packet))
        except av.error.FFmpegError:
            errors += 1
        for chunk in audio.timed_chunks(n):
            yield chunk
            packets.deadline = time.monotonic() + config.timeout_s  # the consumer's time is not ours
        if audio.done:
            break
    if packets.error is not None:  # damaged from here on: keep what was read
        audio.note(f"demuxing stopped early ({packets.error.strerror or packets.error})")
    if not audio.done:
        try:
            audio.add(aus.codec_context.decode(None))
        except av.error.FFmpegError:
            errors += 1
    audio.finish()
    raise_if_corrupt(name, "audio", errors, count)
    if audio.first_time is None:
        why = f" ({audio.problem})" if audio.problem else ""
        where = f" at or after {audio.start:g} s" if audio.start > 0 else ""
        raise MediaError(name, f"audio stream yielded no decodable samples{where}{why}")
    yield from audio.timed_chunks(n)
    yield from audio.timed_chunks(None)


def _start_time(container) -> float:
    """The container's start time in seconds (0 when unstated); every time here counts from it."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


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
    if (config.num_frames < 1 or config.height < 1 or config.width < 1 or config.sample_rate < 1
            or (config.max_side is not None and config.max_side < 2)):
        raise MediaError(name, f"invalid DecodeConfig {config}")
    source = _input(source, name)
    rewind = source.tell() if hasattr(source, "tell") else None
    header_probe = skip = seek = True
    for _ in range(4):  # each retry turns one of the three off for good
        try:
            with _open(source, name, config, HEADER_PROBE_OPTIONS if header_probe else None) as container:
                return _decode_container(container, name, start, end, config, deadline,
                                         header_probe=header_probe, skip=skip, seek=seek)
        except _NeedsFullProbe:
            header_probe = False
        except SkipTooCoarse:
            skip = False
        except ReadFromStart:
            seek = False
        if rewind is not None:
            source.seek(rewind)
    raise MediaError(name, "cannot decode: opened four times without a usable pass")


class _NeedsFullProbe(Exception):
    """The header-only probe left out something decoding needs: open again with FFmpeg's full probe."""


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
    """The Clip of [start, end) (seconds; None: the source's start, end) in one pass over an open
    container. deadline: time.monotonic() seconds;
    header_probe: opened with HEADER_PROBE_OPTIONS (_NeedsFullProbe where that left something out);
    skip: whether frames the samples do not need may be skipped (see SkipTooCoarse);
    seek: whether to seek to the window (see ReadFromStart)."""
    vs, aus = _streams(container, name)
    if vs is not None:
        _check_frame_size(vs, name, config, header_probe)
    t0 = _start_time(container)
    window_end = None if end is None else float(end)
    duration, untimed_period = media_duration(container, vs, aus, t0, deadline, name, window_end)
    timed = untimed_period is None
    s, e = _window(name, start, end, duration, config)
    T = config.num_frames
    samples = s + (np.arange(T) + 0.5) * (e - s) / T  # seconds, float64 [T]
    fps, window_skip = None, "DEFAULT"
    if vs is not None:
        fps, window_skip = _set_up_video(vs, config, t0, s, e, untimed_period, skip)
    if aus is not None:
        aus.codec_context.thread_count = 1
    reorder_known = vs is not None and vs.codec_context.has_b_frames

    # audio decoders need a little before the window to settle (MDCT overlap, Opus pre-roll)
    preroll = _AUDIO_PREROLL_S if aus is not None else 0.0
    seek = seek and s > 0 and timed and not (vs is None and _unreliable_seek(aus))
    if seek:
        seek_to_keyframe(container, vs, t0 + s - preroll, t0)
    period = 1.0 / fps if fps else 1e-3
    video = VideoSampler(samples, config, t0, vs.time_base, vs.codec_context, s, e, period) if vs is not None else None
    audio = AudioWindow(s, e, config.sample_rate, t0, aus.time_base) if aus is not None else None
    lead_in_end = s - _LEAD_IN_S if s > 0 else None
    demuxer = Demuxer(vs, aus, video, audio, name, seek, window_skip, lead_in_end)
    data_end = demuxer.run(container, deadline, config.timeout_s)
    if header_probe and vs is not None and not reorder_known and vs.codec_context.has_b_frames:
        # the stream reorders frames but its header did not say so: the decoder found out
        # mid-stream and may have dropped frames before that; the full probe measures it first
        raise _NeedsFullProbe

    # each stream's end as its header states it, unless that is only a bit-rate estimate
    estimated = estimated_duration(container)
    frames = frame_times = width = height = None
    if video is not None:
        frames, frame_times, rotation = video.result(name, duration if estimated else stream_end(vs, t0), data_end)
        width, height = vs.codec_context.width, vs.codec_context.height
        if rotation % 180:
            width, height = height, width
    wave = audio.result(name, duration if estimated else stream_end(aus, t0), data_end) if audio is not None else None
    if frames is None and wave is None:
        raise MediaError(name, f"neither video nor audio in the window [{s:g}, {e:g}) of {duration:.3f} s")
    return Clip(
        source=name, frames=frames, audio=wave, sample_rate=config.sample_rate, start=s, end=e,
        duration=duration, fps=fps, width=width, height=height,
        frame_times=frame_times if frame_times is not None else np.zeros(0),
    )


def _check_frame_size(vs, name: str, config: DecodeConfig, header_probe: bool) -> None:
    """Raises unless the video stream states a frame size (pixels) within config.max_pixels:
    _NeedsFullProbe where a header-only probe may have missed it, else MediaError."""
    w, h = vs.codec_context.width, vs.codec_context.height
    if not (w and h) and header_probe:
        raise _NeedsFullProbe
    if not (w and h):
        raise MediaError(name, "video stream has no frame size (truncated or corrupt header)")
    if w * h > config.max_pixels:
        raise MediaError(name, f"video frame {w}x{h} = {w * h} pixels exceeds max_pixels={config.max_pixels}")


def _window(name: str, start, end, duration: float, config: DecodeConfig) -> tuple[float, float]:
    """The window [s, e) to decode, in seconds from the source start: [start, end) with None as the
    source's start or end (duration, seconds), clamped to the source; MediaError when invalid or too long."""
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
        raise MediaError(name, f"window [{s:g}, {e:g}) is {e - s:.1f} s long, "
                               f"over max_duration_s={config.max_duration_s:g}")
    return s, e


def _set_up_video(vs, config: DecodeConfig, t0: float, s: float, e: float, untimed_period: float | None,
                  skip: bool) -> tuple[float | None, str]:
    """Sets the video decoder up for the window [s, e) (seconds): its threads, and which frames it
    skips. untimed_period: the frame period in seconds when frames carry no timestamps, else None.
    Returns (frames per second, None when unknown; the skip_frame for the window itself)."""
    timed = untimed_period is None
    rate = next((r for r in (vs.average_rate, vs.guessed_rate, vs.base_rate) if r and r <= _MAX_FPS), None)
    fps = float(rate) if rate and timed else (1.0 / untimed_period if untimed_period else None)
    cc = vs.codec_context
    cc.thread_count = config.threads
    cc.thread_type = "AUTO"
    v_end = stream_end(vs, t0)
    shown = (min(e, v_end) if v_end else e) - s  # seconds of video in the window (audio may run longer)
    window_skip = "DEFAULT"
    if skip and fps and shown * fps >= _NONREF_FRAMES_PER_SAMPLE * config.num_frames and timed:
        window_skip = "NONREF"  # Demuxer may upgrade this to BIDIR after reading x264's SEI
    # frames before the window matter only as references (see _LEAD_IN_S); frames
    # timed by counting must all be decoded
    cc.skip_frame = "NONREF" if s > 0 and timed else window_skip
    return fps, window_skip


# Before a window starts, frames are decoded only as references of later ones, so non-reference
# frames are skipped up to this many seconds before the window start; from there on the
# window's own rule applies (a frame shown just before the start may be the one a first
# sample takes, unless a variable-frame-rate gap longer than this precedes the window).
_LEAD_IN_S = 0.5
_AUDIO_PREROLL_S = 0.2  # audio decoded before a window so that its first samples are settled (Opus needs 80 ms)


def _unreliable_seek(aus) -> bool:
    """Audio whose seeks land at the wrong time: ADPCM/G.72x in wav (FFmpeg seeks by a header
    byte rate that FFmpeg 5.1 itself writes wrong). Cheap to decode from the start."""
    return aus is not None and aus.codec_context.name.startswith(("adpcm", "g72"))
