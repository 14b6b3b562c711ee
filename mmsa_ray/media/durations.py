"""How long a media file really is, and where its data ends (mmsa_ray.media asks it before
decoding a window): a header's stated duration where it can be trusted, otherwise a scan of
the packets' timestamps (no decoding).

Headers are not always right: raw audio demuxers estimate from the first frames' bit rate,
Matroska and NUT state the end for some writers and the length for others, and a damaged
header can claim far more than the file's size allows. Each case below says how it is told apart.

`PacketReader` (demuxing under a wall-clock deadline) is the packet loop of the scan here and
of the decoder's passes, which import it from this module.
"""

from __future__ import annotations

import time

from mmsa_ray.media.types import MediaError


def stream_end(stream, t0: float) -> float | None:
    """The stream's claimed end time (seconds, relative to t0), if the container says."""
    if stream is None or stream.duration is None or stream.time_base is None:
        return None
    st = stream.start_time or 0
    return float((st + stream.duration) * stream.time_base) - t0


# Demuxers of raw audio streams (ADTS AAC, MP3, AC-3, ...) whose duration FFmpeg estimates
# from the first frames' bit rate when no header says it: an ADTS file with quiet and busy
# passages can claim 21 s for 30 s of audio, and a joined MP3 5 s for 2 s. Taken as the
# truth, the tail would be silently dropped, or a whole file called truncated.
BITRATE_DURATION_FORMATS = frozenset({"aac", "mp3", "ac3", "eac3", "dts", "truehd", "amr", "loas"})


# Demuxers whose header duration is the end timestamp for some writers (FFmpeg's muxers) and
# the length for others (mkvmerge). The two agree while timestamps start at 0; once they start
# later (a TS capture remuxed with -copyts, -output_ts_offset) the end is read from the tail.
END_OR_LENGTH_FORMATS = frozenset({"matroska", "nut"})


# No real codec averages less (codec2, the lowest, runs at 450 bit/s): a header that states a
# longer duration than the file's size allows at this rate is damaged (seen: a Matroska header
# saying 2^31 s for a 3 s file), and the duration is measured by a packet scan instead.
MIN_PLAUSIBLE_BIT_RATE = 200


def implausible_duration(container, stated: float) -> bool:
    size = container.size  # bytes; <= 0 when the input cannot tell (a non-seekable stream)
    return size is not None and size > 0 and stated > size * 8 / MIN_PLAUSIBLE_BIT_RATE


def estimated_duration(container) -> bool:
    """True for raw audio streams, whose header duration FFmpeg may only estimate from the bit rate."""
    return container.format.name in BITRATE_DURATION_FORMATS


def media_duration(container, vs, aus, t0: float, deadline: float, name: str,
                   window_end: float | None) -> tuple[float, float | None]:
    """(source duration in seconds, frame period in seconds if frames carry no timestamps).

    From the container header, else the stream headers, else a demux scan (packets read,
    not decoded); also the scan when the header's duration is impossible for the file's
    size (MIN_PLAUSIBLE_BIT_RATE). A raw audio stream's stated duration may be a bit-rate estimate
    (BITRATE_DURATION_FORMATS): it is measured by the scan when the window runs to it
    (window_end None or past it). Raw elementary video streams (.h264, .hevc) carry no
    timestamps at all: their duration is the sum of the video packets' durations, and
    their frames are timed by counting (see VideoSampler).

    t0: the container's start time in seconds (durations count from it); deadline:
    time.monotonic() seconds (see PacketReader); window_end: where the window asked for
    ends, seconds (None: the end of the source).
    """
    if container.duration is not None and container.duration > 0:
        stated = container.duration / 1e6
    else:
        ends = [x for x in (stream_end(vs, t0), stream_end(aus, t0)) if x is not None and x > 0]
        stated = max(ends) if ends else None
    if stated is not None and implausible_duration(container, stated):
        stated = None
    streams = [x for x in (vs, aus) if x is not None]
    if stated is not None and t0 > 0 and container.format.name.split(",")[0] in END_OR_LENGTH_FORMATS:
        # the tail lies before the later of the two readings (stated as the length): read it
        import av

        try:
            container.seek(int(round((t0 + stated) * 1e6)), backward=True)
        except av.error.FFmpegError:  # not seekable (damaged index): keep the header's reading
            return stated, None
        last, _, _ = scan_packets(container, streams, vs, t0, deadline, name)
        try:
            container.seek(0)
        except av.error.FFmpegError as e:
            raise MediaError(name, f"cannot seek back to the start after reading the end; damaged index "
                                   f"({e.strerror or e})") from e
        return (last if last > 0 else stated), None
    if stated is not None and not (estimated_duration(container) and (window_end is None or window_end > stated)):
        return stated, None
    last, untimed, n_untimed = scan_packets(container, streams, vs, t0, deadline, name)
    if last > 0:
        container.seek(0)
        return last, None
    if untimed > 0:
        container.seek(0, unsupported_byte_offset=True)  # raw demuxers cannot seek by time
        return untimed, untimed / n_untimed
    raise MediaError(name, "no timestamped packets: empty or corrupt media")


def scan_packets(container, streams, vs, t0: float, deadline: float, name: str) -> tuple[float, float, int]:
    """Demux (no decode) from the current position to the end of what is readable: (end of the
    last timestamped packet in seconds after t0, summed duration in seconds and count of the
    untimed video packets). deadline: time.monotonic() seconds, as for PacketReader."""
    last = untimed = 0.0
    n_untimed = 0
    # interrupted=None: a read FFmpeg interrupts ends the scan like damage, where reading stopped
    for packet in PacketReader(container, streams, deadline, name, "timed out while scanning for the duration"):
        if packet.time_base is None or not packet.size:
            continue
        if packet.pts is not None:
            last = max(last, float((packet.pts + (packet.duration or 0)) * packet.time_base) - t0)
        elif vs is not None and packet.stream_index == vs.index and packet.duration:
            untimed += float(packet.duration * packet.time_base)
            n_untimed += 1
    return last, untimed, n_untimed


class PacketReader:
    """The packets of `streams` demuxed (not decoded) from the container's current position, in
    file order, under a wall-clock deadline; iterate it once. The one packet loop of the
    duration scan and of mmsa_ray.media.decode's passes.

    deadline: time.monotonic() seconds; asking for a packet after it raises
    MediaError(name, timed_out). A caller may move it on (stream_audio does once its consumer
    has had a chunk: the consumer's time is not the decoder's).
    interrupted: the MediaError cause when FFmpeg's interrupt callback (PyAV's per-read timeout)
    stops a read; None: that ends the packets like damage.
    Any other FFmpeg error ends the packets early (the data is damaged from there on: what was
    read is kept), and `error` holds it; it stays None when the packets ran to the end.
    """

    def __init__(self, container, streams, deadline: float, name: str, timed_out: str,
                 interrupted: str | None = None):
        self.container, self.streams, self.name = container, streams, name
        self.deadline = deadline
        self.timed_out, self.interrupted = timed_out, interrupted
        self.error = None  # the av.error.FFmpegError that ended the packets early

    def __iter__(self):
        import av

        packets = self.container.demux(self.streams)
        while True:
            if time.monotonic() > self.deadline:
                raise MediaError(self.name, self.timed_out)
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:  # ExitError (the interrupt callback) among them
                if isinstance(e, av.error.ExitError) and self.interrupted is not None:
                    raise MediaError(self.name, self.interrupted) from e
                self.error = e
                return
            yield packet
