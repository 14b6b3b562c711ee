"""One pass over a container's packets for decode_clip: video packets buffered a GOP at a time
and decoded only where a sample falls, audio decoded as it comes (see mmsa_ray.media.decode's
docstring for why), and the corrupt-stream rule both decoders share."""

from __future__ import annotations

import math

from mmsa_ray.media.bitstream import bidir_safe, clean_start
from mmsa_ray.media.durations import PacketReader
from mmsa_ray.media.sampling import AudioWindow, VideoSampler
from mmsa_ray.media.types import MediaError


def raise_if_corrupt(name: str, kind: str, errors: int, count: int) -> None:
    """MediaError when more than a fifth (and more than 2) of a stream's `count` packets failed to
    decode; a failed drain at the end counts as one more error."""
    if errors > max(2, count // 5):
        raise MediaError(name, f"corrupt {kind} stream: {min(errors, count)} of {count} packets failed to decode")


class Demuxer:
    """One pass over the packets from the seek point, feeding the video sampler and audio window.

    Video packets are buffered one GOP at a time (from a clean keyframe to the next, in decode
    order), and a GOP is decoded only if a pending sample falls before the next one starts.
    from_keyframe: drop the video packets before the first clean keyframe (after seek_to_keyframe).
    window_skip: the video decoder's skip_frame from the first packet shown at or after
    lead_in_end (seconds); before that it skips what the set-up chose (non-reference frames).
    """

    def __init__(self, vs, aus, video: VideoSampler | None, audio: AudioWindow | None, name: str,
                 from_keyframe: bool, window_skip: str, lead_in_end: float | None):
        self.vs, self.aus, self.video, self.audio, self.name = vs, aus, video, audio, name
        self.from_keyframe, self.window_skip, self.lead_in_end = from_keyframe, window_skip, lead_in_end
        self.streams = [x for x in (vs, aus) if x is not None]
        self.gop: list = []  # video packets since the last clean keyframe, in decode order
        self.errors = {"video": 0, "audio": 0}  # packets that failed to decode
        self.counts = {"video": 0, "audio": 0}  # packets fed to the decoders
        self.t0 = (video or audio).t0
        self.time_base = {x.index: float(x.time_base) for x in self.streams if x.time_base}  # seconds per tick
        self.data_end = -math.inf  # where the packets read end, seconds after the container start

    def run(self, container, deadline: float, timeout_s: float) -> float:
        """Demux until both streams are done or the data ends, then drain the decoders. Returns where
        the packets read end (seconds after the container start; where the file's data ends when a
        stream was not done before it). deadline: time.monotonic() seconds; timeout_s names it."""
        timed_out = f"timed out after {timeout_s:g} s (timeout_s) while decoding"
        packets = PacketReader(container, self.streams, deadline, self.name, timed_out, timed_out)
        for packet in packets:
            if packet.size and not self._route(packet):
                break
        if packets.error is not None and not self._done():  # truncated / damaged container: keep what was read
            for window in (self.video, self.audio):
                if window is not None:
                    window.note(f"demuxing stopped early ({packets.error.strerror or packets.error})")
        self._drain()
        for kind in ("video", "audio"):
            raise_if_corrupt(self.name, kind, self.errors[kind], self.counts[kind])
        return self.data_end

    def _done(self) -> bool:
        return (self.video is None or self.video.done) and (self.audio is None or self.audio.done)

    def _route(self, packet) -> bool:
        """Hands a packet to its stream; False once no stream needs more."""
        packet_end = None  # seconds after the container start, when the packet has a timestamp
        if packet.pts is not None and packet.stream_index in self.time_base:
            packet_end = (packet.pts + (packet.duration or 0)) * self.time_base[packet.stream_index] - self.t0
            self.data_end = max(self.data_end, packet_end)
        if self.vs is not None and packet.stream_index == self.vs.index:
            if self.video.done:
                return not self._done()
            self._video_packet(packet)
        elif self.aus is not None and packet.stream_index == self.aus.index:
            if self.audio.done:
                return not self._done()
            self._audio_packet(packet, packet_end)
        return True

    def _video_packet(self, packet) -> None:
        vs = self.vs
        clean_key = packet.is_keyframe and clean_start(vs, packet)
        if self.from_keyframe and not clean_key:
            return
        self.from_keyframe = False
        self.counts["video"] += 1
        if self.counts["video"] == 1 and bidir_safe(vs, packet):
            vs.codec_context.skip_frame = "BIDIR"
            if self.window_skip == "NONREF":
                self.window_skip = "BIDIR"
        if clean_key:
            self._flush_gop(float(packet.pts * packet.time_base) - self.video.t0 if packet.pts is not None else None)
        self.video.add_packet(packet)
        self.gop.append(packet)

    def _audio_packet(self, packet, packet_end: float | None) -> None:
        import av

        self.counts["audio"] += 1
        self.audio.add_packet(packet_end)
        try:
            self.audio.add(self.aus.codec_context.decode(packet))
        except av.error.FFmpegError:
            self.errors["audio"] += 1

    def _flush_gop(self, next_start: float | None) -> None:
        """Decodes the buffered GOP if a pending sample falls before next_start (seconds: where the
        next GOP starts; None: the end), up to the last such sample, then empties the buffer."""
        video = self.video
        if self.gop and not video.done and (next_start is None or video.next_sample < next_start):
            self._decode_gop(float(video.samples[video.samples < next_start][-1]) if next_start is not None else None)
        self.gop.clear()

    def _decode_gop(self, until: float | None) -> None:
        """Decodes the buffered packets until every sample <= until (seconds; None: every sample)
        is assigned, i.e. the frame after it has been seen."""
        import av

        vs, video = self.vs, self.video
        for p in self.gop:
            if video.done or (until is not None and video.next_sample > until):
                return
            if self.lead_in_end is not None and (p.pts is None or not video.time_base
                                                 or p.pts * video.time_base - video.t0 >= self.lead_in_end):
                vs.codec_context.skip_frame = self.window_skip  # the window: decode what it needs
                self.lead_in_end = None
            try:
                frames = vs.codec_context.decode(p)
            except av.error.FFmpegError:
                self.errors["video"] += 1
                continue
            for f in frames:
                video.add(f)

    def _drain(self) -> None:
        """Decodes what is left: the last GOP, then the frames and samples the decoders still hold."""
        import av

        if self.video is not None:
            self._flush_gop(None)
            if not self.video.done:
                try:
                    for f in self.vs.codec_context.decode(None):
                        self.video.add(f)
                except av.error.FFmpegError:
                    self.errors["video"] += 1
        if self.audio is not None:
            try:
                self.audio.add(self.aus.codec_context.decode(None))
            except av.error.FFmpegError:
                self.errors["audio"] += 1
            self.audio.finish()
