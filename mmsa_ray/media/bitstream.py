"""What a video packet's bytes say, read without decoding (mmsa_ray.media uses it to start
decoding and to skip frames safely).

- `clean_start`: whether decoding can start at a keyframe-flagged packet and give exact
  frames (H.264 IDR and I slices, HEVC IRAP pictures, MPEG-4 part 2 I-VOPs; containers also
  flag H.264 recovery points and packed-bitstream placeholders).
- `seek_to_keyframe`: where in a file decoding can start for a window: the container's seek,
  moved back until a clean start precedes the window (else `ReadFromStart`).
- `bidir_safe`: whether every B-frame can be skipped with exact I/P frames (x264 with ref=1,
  read from the settings SEI x264 writes in its first frame).
"""

from __future__ import annotations

import re

X264_REF = re.compile(rb"x264 - core \d+.{0,2000}? ref=(\d+)", re.S)  # x264's settings SEI (first frame)
_SEEK_BACKOFF_S = (0.0, 1.0, 3.0, 10.0, 30.0, 120.0)  # how far before the window to seek, tried in turn


def clean_start(vs, packet) -> bool:
    """Whether decoding can start at this keyframe-flagged packet and give exact frames.

    Containers flag more than clean starts: mp4/TS mark H.264 recovery points, which
    x264's intra refresh puts on P-frames that need a second of earlier frames, and AVI
    indexes of packed-bitstream MPEG-4 (Xvid/DivX with B-frames) flag the placeholder
    packet after an I-frame. H.264 counts IDR frames and I-frames (open GOP), HEVC its IRAP
    pictures, MPEG-4 part 2 I-VOPs; other codecs' flags are taken as they are.
    """
    codec = vs.codec_context.name
    if codec not in ("h264", "hevc", "mpeg4"):
        return True
    data = bytes(packet)
    if codec == "mpeg4":
        i = data.find(b"\x00\x00\x01\xb6")  # VOP start code, then vop_coding_type (0: I)
        if i < 0:
            return True
        vop_end = data.find(b"\x00\x00\x01", i + 4)
        # an N-VOP (not coded: packed bitstream's placeholder) is a 2-4 byte header; a coded
        # I-VOP carries macroblocks after it (a tiny real one read as a placeholder only
        # makes decoding start earlier)
        return i + 4 < len(data) and data[i + 4] >> 6 == 0 and (vop_end if vop_end >= 0 else len(data)) - i - 4 > 4
    extradata = vs.codec_context.extradata or b""
    for nal in nal_units(data, nal_length_size(codec, extradata)):
        if not nal:
            continue
        if codec == "hevc":
            kind = (nal[0] >> 1) & 0x3F
            if kind < 32:  # a picture: IRAP (BLA, IDR, CRA) or not
                return 16 <= kind <= 23
        else:
            kind = nal[0] & 0x1F
            if kind == 5:  # IDR
                return True
            if kind == 1:  # a non-IDR slice: clean only if it is an I (or SI) slice
                return h264_slice_type(nal) in (2, 4, 7, 9)  # I, SI
    return False


def nal_length_size(codec: str, extradata: bytes) -> int | None:
    """Bytes of the NAL length prefix for avcC/hvcC (mp4, mkv) extradata; None for Annex B (TS, raw)."""
    if codec == "h264" and len(extradata) > 4 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21 and extradata[0] == 1:
        return (extradata[21] & 3) + 1
    return None


def nal_units(data: bytes, length_size: int | None):
    """The NAL units of a packet (each from its header byte on), length-prefixed or Annex B."""
    if length_size:
        i = 0
        while i + length_size <= len(data):
            n = int.from_bytes(data[i:i + length_size], "big")
            i += length_size
            yield data[i:i + min(n, 16)]  # headers only: the first bytes are all that is read
            i += n
        return
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        yield data[i + 3:i + 19]
        i = data.find(b"\x00\x00\x01", i + 3)


def h264_slice_type(nal: bytes) -> int:
    """slice_type of an H.264 slice NAL: the second Exp-Golomb number after its header byte."""
    bits = "".join(f"{b:08b}" for b in nal[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    pos = 0
    value = -1
    for _ in range(2):  # first_mb_in_slice, then slice_type
        zeros = len(bits) - len(bits[pos:].lstrip("0")) - pos
        if pos + 2 * zeros + 1 > len(bits):
            return -1
        value = int(bits[pos + zeros:pos + 2 * zeros + 1], 2) - 1
        pos += 2 * zeros + 1
    return value


def bidir_safe(vs, packet) -> bool:
    """True when skipping every B-frame leaves the I/P frames exact: H.264 from x264 with ref=1.

    Only asked while non-reference frames are already being skipped (frames per sample
    plentiful). x264 puts its settings in an SEI of its first frame; after a seek into
    the middle of a stream it is usually not there and the answer is False (safe).
    """
    if str(vs.codec_context.skip_frame) != "NONREF" or vs.codec_context.name != "h264":
        return False
    m = X264_REF.search(bytes(packet)[:4096])
    return m is not None and int(m.group(1)) == 1


class ReadFromStart(Exception):
    """No clean keyframe precedes the window (seek_to_keyframe): open again and read from the start of the file.

    (Seeking back to the start is not the same: a seek by time goes through the video's
    index, whose first entry is its first keyframe, so audio before a late-starting video
    is never read, and a seek on the audio stream can land past the video's first keyframe.)"""


def seek_to_keyframe(container, vs, t: float, t0: float) -> None:
    """Position the demuxer of an open container so decoding can start at or before t seconds
    (container time; t0: the container's start time in seconds, which MPEG-TS makes negative
    after a timestamp wrap). vs: the video stream, None to seek for audio alone.

    mp4/mkv/webm/avi seek through their index to the keyframe before t. MPEG-TS/PS and
    index-less files seek by bisecting on timestamps and land on any packet, often a
    P-frame that cannot be decoded; there the seek point moves back until a clean
    keyframe (clean_start) at or before t follows it, and the video packets before that
    keyframe are to be dropped. Raises ReadFromStart when no clean keyframe comes before t,
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
    raise ReadFromStart


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
