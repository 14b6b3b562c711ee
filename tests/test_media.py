"""mmsa_ray.media.decode_clip on media written by tests/mediagen.py (PyAV)."""

from __future__ import annotations

import fractions
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mediagen  # noqa: E402

from mmsa_ray.media import (  # noqa: E402
    Clip,
    DecodeConfig,
    MediaError,
    bitstream,  # noqa: E402
    decode_clip,
)
from mmsa_ray.media import decode as decoder  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def av_clip(media) -> Path:
    """2 s, 15 fps (30 frames), 160x120 H.264 + AAC 44.1 kHz stereo 440 Hz."""
    return mediagen.write_video(media / "av.mp4", 2.0, 160, 120, 15, audio=(44100, 2, "aac"))


def indices(clip: Clip) -> list[int]:
    return [mediagen.frame_index(f) for f in clip.frames]


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


def expected_indices(start: float, end: float, fps: float, n_frames: int, T: int = 16) -> list[int]:
    samples = start + (np.arange(T) + 0.5) * (end - start) / T
    return [min(int(np.floor(s * fps + 1e-9)), n_frames - 1) for s in samples]


# ----------------------------------------------------------------------------- containers, codecs


@pytest.mark.parametrize("name,codec,audio", [
    ("mp4", "libx264", (44100, 2, "aac")),
    ("mkv", "libx264", (48000, 1, "aac")),
    ("webm", "libvpx-vp9", (48000, 2, "libopus")),
    ("avi", "mpeg4", (22050, 1, "libmp3lame")),
    ("mov", "mjpeg", (16000, 1, "aac")),
])
def test_containers_and_codecs(media, name, codec, audio):
    path = mediagen.write_video(media / f"c.{name}", 1.0, 96, 64, 15, codec=codec, audio=audio)
    clip = decode_clip(path)
    assert clip.frames.shape == (16, 3, 112, 112) and clip.frames.dtype == np.uint8
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert clip.end == clip.duration == pytest.approx(1.0, abs=0.1)  # avi keeps mp3's encoder padding
    assert abs(len(clip.audio) - round(clip.end * 16000)) <= 400
    assert abs(peak_hz(clip.audio, 16000) - 440) < 5
    assert (clip.width, clip.height) == (96, 64)
    assert clip.fps == pytest.approx(15, rel=0.01)
    assert clip.duration == pytest.approx(1.0, abs=0.1)
    want = expected_indices(0, clip.end, 15, 15)
    if name == "avi":  # AVI has no pts: the muxer/demuxer guess puts mpeg4's frames one slot late
        assert all(0 <= w - g <= 1 for g, w in zip(indices(clip), want, strict=True)) and indices(clip)[-1] == 14
    else:
        assert indices(clip) == want
    assert clip.frame_times.shape == (16,) and np.all(np.diff(clip.frame_times) >= 0)


def test_av_clip_properties_and_exact_sampling(av_clip):
    clip = decode_clip(av_clip)
    assert clip.source == str(av_clip) and clip.has_video and clip.has_audio
    assert (clip.start, clip.end, clip.duration) == (0.0, 2.0, 2.0)
    assert (clip.width, clip.height, clip.fps, clip.sample_rate) == (160, 120, 15.0, 16000)
    want = expected_indices(0, 2.0, 15, 30)
    assert indices(clip) == want  # spans the clip: frame 0 .. 29
    np.testing.assert_allclose(clip.frame_times, np.array(want) / 15, atol=1e-6)
    assert len(clip.audio) == 32000


def test_window_frames_and_audio_are_exact(av_clip):
    full = decode_clip(av_clip).audio
    for start, end in [(0.5, 1.5), (0.25, 0.75), (1.0003, 1.9)]:
        clip = decode_clip(av_clip, start, end)
        assert (clip.start, clip.end) == (start, end)
        assert indices(clip) == expected_indices(start, end, 15, 30)
        assert np.all((clip.frame_times >= start - 1 / 15) & (clip.frame_times < end))
        n = round((end - start) * 16000)
        assert len(clip.audio) == n
        i0 = round(start * 16000)
        # sample-accurate: the window equals the same span of the whole-clip decode
        assert np.corrcoef(clip.audio[100:], full[i0 + 100:i0 + n])[0, 1] > 0.999
        # and is in phase with the 440 Hz tone written at t = 0
        t = (i0 + np.arange(n)) / 16000
        ref = 0.5 * np.sin(2 * np.pi * 440 * t)
        assert np.corrcoef(clip.audio[200:-200], ref[200:-200])[0, 1] > 0.99


def test_window_limits_and_errors(av_clip):
    assert decode_clip(av_clip, 1.5, 99.0).end == 2.0  # clamped to the source
    assert decode_clip(av_clip, start=1.0).start == 1.0
    with pytest.raises(MediaError, match="past the end"):
        decode_clip(av_clip, 2.5, 3.0)
    with pytest.raises(MediaError, match="invalid window"):
        decode_clip(av_clip, 1.0, 0.5)


def test_long_clip_skips_frames_but_spans_window(media):
    # 4 s at 30 fps, T = 8: 15 frames per sample, so non-reference frames are skipped and
    # a 10-frame GOP lets whole GOPs go undecoded; samples take the nearest decoded frame.
    path = mediagen.write_video(media / "long.mp4", 4.0, 96, 64, 30, options={"g": "10"})
    clip = decode_clip(path, config=DecodeConfig(num_frames=8, height=32, width=48))
    assert clip.frames.shape == (8, 3, 32, 48)
    got = indices(clip)
    want = expected_indices(0, 4.0, 30, 120, T=8)
    assert all(abs(w - g) <= 2 for g, w in zip(got, want, strict=True)), (got, want)  # the nearest decoded frame
    np.testing.assert_allclose(clip.frame_times, np.array(got) / 30, atol=1e-6)
    assert got[0] <= 8 and got[-1] >= 108


@pytest.mark.parametrize("seconds,gop,start,end,decode_from,ts_offset", [
    (3.0, 250, 1.0, 2.6, 0.0, 0),  # one keyframe: read from the start
    (12.0, 15, 9.0, 10.2, 6.0, 0),  # 1 s GOPs: from a keyframe shortly before the window
    # timestamps that wrap around 2**33 ticks within the file (a capture from a running
    # broadcast): FFmpeg unwraps them to a negative start time
    (6.0, 15, 3.0, 4.2, 1.0, 95440),
])
def test_window_in_mpegts(media, seconds, gop, start, end, decode_from, ts_offset):
    # MPEG-TS seeks by bisecting on timestamps and lands on any packet, usually a P-frame
    path = mediagen.write_video(media / f"gop{gop}_{ts_offset}.ts", seconds, 96, 64, 15, audio=(48000, 2, "aac"),
                                options={"g": str(gop)}, container_options={"output_ts_offset": str(ts_offset)})
    clip = decode_clip(path, start, end)
    got = np.array(indices(clip))
    # the video starts a little after the audio (AAC priming) in TS: frame k shows from
    # offset + k / 15 s; each sample takes the frame showing at its time
    offset = clip.frame_times - got / 15
    np.testing.assert_allclose(offset, offset[0], atol=1e-6)
    assert 0 <= offset[0] < 0.1
    samples = start + (np.arange(16) + 0.5) * (end - start) / 16
    assert np.all((clip.frame_times <= samples + 1e-6) & (samples < clip.frame_times + 1 / 15))
    assert len(clip.audio) == round((end - start) * 16000) and abs(peak_hz(clip.audio, 16000) - 440) < 5
    import av

    with av.open(str(path)) as container:  # where decoding starts: the last keyframe before the window
        t0, vs = container.start_time / 1e6, container.streams.video[0]
        assert (t0 < 0) == (ts_offset > 0)
        bitstream.seek_to_keyframe(container, vs, t0 + start, t0)
        key = next(p for p in container.demux(vs) if p.is_keyframe)
        assert decode_from <= float(key.pts * key.time_base) - t0 <= start


@pytest.mark.parametrize("ext,codec", [("h264", "libx264"), ("hevc", "libx265")])
def test_raw_elementary_stream_is_timed_by_counting(media, ext, codec):
    # .h264/.hevc files (camera and CCTV exports) have no container and no timestamps
    path = mediagen.write_video(media / f"raw.{ext}", 2.0, 96, 64, 15, codec=codec, options={"preset": "medium"})
    clip = decode_clip(path)
    assert clip.duration == pytest.approx(2.0) and clip.fps == pytest.approx(15.0)
    assert indices(clip) == expected_indices(0, 2.0, 15, 30)
    np.testing.assert_allclose(clip.frame_times, np.array(indices(clip)) / 15, atol=1e-6)
    assert indices(decode_clip(path, 0.5, 1.5)) == expected_indices(0.5, 1.5, 15, 30)


@pytest.mark.parametrize("name,codec,options", [
    ("mp4", "libx264", {"preset": "medium"}),  # B-frames, b-pyramid, ref=3
    ("mkv", "libx264", {}),
    ("webm", "libvpx-vp9", {}),
    ("avi", "mpeg4", {"bf": "2"}),
    ("mov", "mjpeg", {}),
    ("ts", "libx264", {"preset": "medium"}),
])
def test_header_only_probe_decodes_what_the_full_probe_does(media, monkeypatch, name, codec, options):
    # decode_clip opens without FFmpeg's probe decode (it repeats a keyframe decode);
    # the frames, audio and facts must be the same as after a normal open
    import av

    path = mediagen.write_video(media / f"probe.{name}", 2.0, 96, 64, 15, codec=codec, options=options,
                                pattern="texture", audio=(48000, 2, None))
    opens = []  # the options of each av.open
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **kw: opens.append(kw.get("options")) or real_open(*a, **kw))
    fast = [decode_clip(path), decode_clip(path, 0.7, 1.9)]
    assert opens == [decoder.HEADER_PROBE_OPTIONS] * 2  # one open each: no fallback for these
    monkeypatch.setattr(decoder, "HEADER_PROBE_OPTIONS", None)
    slow = [decode_clip(path), decode_clip(path, 0.7, 1.9)]
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.audio, b.audio)
        np.testing.assert_array_equal(a.frame_times, b.frame_times)
        assert (a.duration, a.fps, a.width, a.height) == (b.duration, b.fps, b.width, b.height)


def test_full_probe_fallback_rewinds_file_objects(media, monkeypatch):
    # when the header-only open lacks something, decode_clip opens again with the full
    # probe; a file object must be read again from where the caller left it. A header-only
    # probe of 32 bytes does not learn that this Matroska file's H.264 reorders frames
    # (B-frames): the decoder finds out mid-stream, and the clip is decoded again.
    import av

    path = mediagen.write_video(media / "fallback.mkv", 2.0, 160, 120, 15, audio=(44100, 2, "aac"))
    ref = decode_clip(path, 0.5, 1.5)
    opens = []  # whether each av.open was a header-only probe
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **kw: opens.append("skip_frame" in kw["options"]) or real_open(*a, **kw))
    monkeypatch.setattr(decoder, "HEADER_PROBE_OPTIONS", {**decoder.HEADER_PROBE_OPTIONS, "probesize": "32"})
    with open(path, "rb") as f:
        clip = decode_clip(f, 0.5, 1.5)
    assert opens == [True, False]
    np.testing.assert_array_equal(clip.frames, ref.frames)
    np.testing.assert_array_equal(clip.audio, ref.audio)


# ----------------------------------------------------------------------------- missing streams, odd shapes


def test_video_without_audio(media):
    clip = decode_clip(mediagen.write_video(media / "silent.mkv", 1.0, 64, 48, 10))
    assert clip.has_video and not clip.has_audio and clip.audio is None
    assert indices(clip) == expected_indices(0, 1.0, 10, 10)


@pytest.mark.parametrize("ext", ["mkv", "mov"])
def test_timestamps_starting_late(media, ext):
    """A clip cut from a longer stream with its timestamps kept (a TS capture remuxed with
    -copyts) runs from 10 s to 13 s; times count from its start. FFmpeg's Matroska muxer
    writes the end time (13 s) where mkvmerge writes the length: read from the tail instead."""
    path = mediagen.write_video(media / f"late.{ext}", 3.0, 160, 120, 15, audio=(16000, 1, "pcm_s16le"), start=10.0)
    clip = decode_clip(path)
    assert clip.duration == pytest.approx(3.0, abs=0.01)
    assert indices(clip) == expected_indices(0, clip.duration, 15, 45)
    assert len(clip.audio) == pytest.approx(48000, abs=10)
    window = decode_clip(path, 1.0, 2.0)
    assert indices(window) == expected_indices(1.0, 2.0, 15, 45) and len(window.audio) == 16000


def test_probe_duration_matches_decode_without_decoding(media, av_clip, hostile):
    """The duration label --segment cuts by: what decode_clip reports, from the headers."""
    from mmsa_ray.media import probe_duration

    late = mediagen.write_video(media / "probe_late.mkv", 1.0, 64, 48, 10, audio=(16000, 1, "pcm_s16le"), start=5.0)
    sources = [av_clip, late, mediagen.write_audio(media / "probe.mp3", 2.0, 22050, 1),
               mediagen.write_video(media / "probe.webm", 1.5, 64, 48, 10, codec="libvpx-vp9", audio=(48000, 1, None))]
    for path in sources:
        assert probe_duration(path) == decode_clip(path).duration, path
    assert probe_duration(av_clip.read_bytes()) == 2.0
    for name in ("empty", "text", "random", "truncated_third", "ftyp_only"):
        with pytest.raises(MediaError):
            probe_duration(hostile[name])
    # headers intact, frames cut or damaged: only decoding finds out
    assert probe_duration(hostile["header_only"]) == 2.0


def test_video_shorter_than_audio(media):
    """2 s of video (25 fps) and 5 s of audio: frames sampled over the 5 s take the frame
    showing, the last one once the video has ended; a window after the video's end has no
    video, like a window after the audio's end has no audio."""
    path = mediagen.write_video(media / "short_video.mp4", 2.0, 160, 120, 25, audio=(16000, 1, None), audio_seconds=5.0)
    clip = decode_clip(path)
    assert clip.duration == pytest.approx(5.0, abs=0.05) and len(clip.audio) == pytest.approx(80000, abs=1100)
    # 50 frames over 5 s is ~3 per sample: too few to skip any, every sample exact
    assert indices(clip) == expected_indices(0, clip.duration, 25, 50)
    after = decode_clip(path, 3.0, 4.0)
    assert after.frames is None and not after.has_video and len(after.audio) == 16000
    assert after.frame_times.shape == (0,)
    assert decode_clip(path, 1.5, 3.0).has_video  # the video shows until 2 s


@pytest.mark.parametrize("ext,codec,audio_codec", [("avi", "mpeg4", "libmp3lame"), ("avi", "mjpeg", "pcm_s16le"),
                                                    ("flv", "libx264", "aac")])
def test_window_near_the_start(media, ext, codec, audio_codec):
    """Windows that start within a second of the file's start: the seek back (audio
    pre-roll, a keyframe before the window) reaches below 0, which AVI and FLV refuse;
    decoding starts at the file's start instead."""
    path = mediagen.write_video(media / f"early_{codec}.{ext}", 3.0, 96, 64, 15, codec=codec,
                                audio=(44100, 1, audio_codec))
    for start in (0.1, 0.3, 0.35):
        clip = decode_clip(path, start, start + 1.0)
        _assert_exact_showing_frames(path, clip, start, start + 1.0)
        assert len(clip.audio) == 16000 and abs(peak_hz(clip.audio, 16000) - 440) < 5


@pytest.mark.parametrize("ext", ["mkv", "mp4", "ts"])
def test_audio_before_a_late_video(media, ext):
    """Video that starts 2 s after the audio (screen recorders, captures): a window before
    the video, or across its start, has all its audio. (A seek by time goes through the
    video's index, whose first entry is at 2 s: the audio before it was lost as silence.)"""
    path = mediagen.write_video(media / f"late_video.{ext}", 2.0, 64, 48, 10, audio=(16000, 1, "aac"),
                                video_delay=2.0, audio_seconds=4.0)
    whole = decode_clip(path)
    for start, end in [(0.5, 1.5), (1.5, 2.5)]:
        clip = decode_clip(path, start, end)
        assert len(clip.audio) == 16000 and np.sqrt(np.mean(clip.audio ** 2)) > 0.3  # the tone, not silence
        np.testing.assert_allclose(clip.audio, whole.audio[int(start * 16000):int(end * 16000)], atol=0.02)
    assert decode_clip(path, 0.5, 1.5).frames is None  # the video shows nothing before 2 s
    clip = decode_clip(path, 2.5, 3.5)  # frame k shows from 2 s + k / 10 (in TS a little later: AAC priming)
    offset = clip.frame_times - np.array(indices(clip)) / 10
    np.testing.assert_allclose(offset, offset[0], atol=1e-6)
    assert 2.0 <= offset[0] < 2.1
    samples = 2.5 + (np.arange(16) + 0.5) / 16
    assert np.all((clip.frame_times <= samples + 1e-6) & (samples < clip.frame_times + 0.1))


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_audio_dropout_keeps_timing(media, ext):
    """Audio packets lost between 2 s and 3 s while the timestamps go on: silence there, and
    the audio after it in place (not 1 s early, nor a 'truncated' error)."""
    path = mediagen.write_video(media / f"dropout.{ext}", 4.0, 64, 48, 10, audio=(48000, 1, "aac"),
                                audio_gaps=[(2.0, 3.0)])
    clip = decode_clip(path)

    def rms(a, b):
        return float(np.sqrt(np.mean(clip.audio[int(a * 16000):int(b * 16000)] ** 2)))

    assert len(clip.audio) == pytest.approx(64000, abs=400)
    assert rms(1.0, 1.95) > 0.3 and rms(2.05, 2.95) < 0.01 and rms(3.05, 3.95) > 0.3
    window = decode_clip(path, 2.5, 3.5)
    np.testing.assert_allclose(window.audio, clip.audio[40000:56000], atol=0.02)


def test_a_corrupt_far_future_audio_timestamp_is_not_a_dropout(media):
    """The last audio packet stamped 10^6 s ahead (corrupt, not lost audio): streaming reads
    on as contiguous instead of filling a million seconds of silence (64 GB); a chunk too short
    to hold one sample is refused instead of yielding empty chunks forever."""
    import av

    from mmsa_ray.media import stream_audio

    rate, path = 16000, media / "far_future.mkv"
    wave = (0.5 * np.sin(2 * np.pi * 440 * np.arange(3 * rate) / rate) * 32767).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        packets = []
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i:i + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
            packets += stream.encode(frame)
        packets += stream.encode(None)
        packets[-1].pts = packets[-1].dts = packets[-1].pts + int(1e6 / packets[-1].time_base)
        for p in packets:
            container.mux(p)
    chunks = list(stream_audio(path, chunk_s=2.0))
    assert [(t, len(w)) for t, w in chunks] == [(0.0, 2 * rate), (2.0, rate)]
    np.testing.assert_allclose(np.concatenate([w for _, w in chunks]), wave / 32768, atol=1e-4)
    for bad in (1e-6, 0.0, float("nan"), float("inf")):
        with pytest.raises(MediaError, match="chunk_s must be at least one sample"):
            next(stream_audio(path, chunk_s=bad))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_held_frame_shows_until_the_next(media, ext):
    """Variable frame rate with a still stretch (a screen recording): frames at 0..1 s, then
    none until 8 s. The frame at 1 s shows until 8 s: samples in between take it, and a
    window inside the still stretch has video."""
    times = [i / 10 for i in range(11)] + [8 + i / 10 for i in range(11)]
    path = mediagen.write_video(media / f"held.{ext}", fps=10, frame_times=times)
    clip = decode_clip(path)
    samples = (np.arange(16) + 0.5) * clip.duration / 16
    held = (samples >= 1.0) & (samples < 8.0)
    assert held.sum() == 12 and all(i == 10 for i, h in zip(indices(clip), held, strict=True) if h)
    assert np.all(clip.frame_times[held] == pytest.approx(1.0))
    assert indices(decode_clip(path, 3.0, 6.0)) == [10] * 16


def test_cover_art_is_not_video(media):
    """The album picture of an mp3/m4a is a video stream marked attached_pic: not the clip's video."""
    import av
    from av.stream import Disposition

    for ext, fmt, codec in [("m4a", "mp4", "aac"), ("mp3", "mp3", "libmp3lame")]:
        path = media / f"cover.{ext}"
        with av.open(str(path), "w", format=fmt) as c:
            audio = c.add_stream(codec, rate=44100)
            audio.layout = "stereo"
            picture = c.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 64, 64, "yuvj420p"
            picture.disposition = Disposition.attached_pic
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), format="rgb24")
            frame.pts = 0
            for packet in [*picture.encode(frame), *picture.encode(None)]:
                c.mux(packet)
            mediagen._encode_audio(c, audio, mediagen.tone(2.0, 44100, 2))
        clip = decode_clip(path)
        assert not clip.has_video and clip.fps is None and clip.frame_times.shape == (0,)
        assert len(clip.audio) == pytest.approx(32000, abs=1200) and abs(peak_hz(clip.audio, 16000) - 440) < 5


@pytest.mark.parametrize("ext,rate,channels", [
    ("wav", 44100, 2), ("m4a", 44100, 2), ("mp3", 22050, 1), ("opus", 48000, 2),
])
def test_audio_only_resampled_to_16k_mono(media, ext, rate, channels):
    path = mediagen.write_audio(media / f"tone.{ext}", 1.0, rate, channels, freq=440)
    clip = decode_clip(path)
    assert clip.frames is None and not clip.has_video and clip.frame_times.shape == (0,)
    assert clip.fps is None and clip.width is None and clip.height is None
    assert len(clip.audio) == pytest.approx(16000, abs=200)
    assert abs(peak_hz(clip.audio, 16000) - 440) < 3
    assert 0.3 < np.abs(clip.audio).max() <= 1.0
    # in phase with the tone written at t = 0 (no resampler / priming delay)
    t = np.arange(len(clip.audio)) / 16000
    assert np.corrcoef(clip.audio[500:15000], 0.5 * np.sin(2 * np.pi * 440 * t[500:15000]))[0, 1] > 0.98


def test_audio_format_change_mid_stream(media):
    """Joined recordings: an MP3 whose second half has another rate and channel count
    decodes whole (FFmpeg's bit-rate estimate of its duration is ignored)."""
    a = mediagen.write_audio(media / "part_a.mp3", 1.0, 44100, 2, freq=440)
    b = mediagen.write_audio(media / "part_b.mp3", 1.0, 22050, 1, freq=880)
    joined = media / "joined.mp3"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    clip = decode_clip(joined)
    assert clip.duration == pytest.approx(2.0, abs=0.15)
    assert len(clip.audio) == pytest.approx(2.0 * 16000, abs=0.15 * 16000)
    assert peak_hz(clip.audio[1600:14400], 16000) == pytest.approx(440, abs=15)
    assert peak_hz(clip.audio[-14400:-1600], 16000) == pytest.approx(880, abs=15)


def test_raw_aac_duration_is_measured_not_estimated(media):
    """ADTS AAC has no duration header; FFmpeg guesses one from the first frames' bit rate
    (here: 3 s of silence, then 6 s of tone). decode_clip measures it instead, so the
    whole file and windows near its end decode."""
    import av

    quiet = mediagen.write_audio(media / "quiet.aac", 3.0, 48000, 2, amplitude=0.0)
    tone = mediagen.write_audio(media / "tone.aac", 6.0, 48000, 2, freq=880)
    path = media / "quiet_then_tone.aac"
    path.write_bytes(quiet.read_bytes() + tone.read_bytes())
    with av.open(str(path)) as c:
        assert abs(c.duration / 1e6 - 9.0) > 1.0  # the estimate this test is about is wrong
    clip = decode_clip(path)
    assert clip.duration == pytest.approx(9.0, abs=0.1)
    assert len(clip.audio) == pytest.approx(9.0 * 16000, abs=0.1 * 16000)
    assert np.abs(clip.audio[8000:40000]).max() < 1e-3  # 0.5-2.5 s: the silence
    late = decode_clip(path, 7.0, 8.5)
    assert len(late.audio) == 1.5 * 16000
    assert peak_hz(late.audio, 16000) == pytest.approx(880, abs=15)


def test_impossible_header_duration_is_measured(media):
    """A damaged Matroska header says 2^31 s for a 3 s file (24 KB): no codec runs at a
    millionth of a bit per second, so the duration is measured from the packets. The whole
    file decodes, and label --segment 2 cuts 2 windows, not a billion."""
    import struct

    import av

    from mmsa_ray.batch.segments import segment_windows
    from mmsa_ray.media import probe_duration

    good = mediagen.write_video(media / "dur_ok.mkv", 3.0, 64, 48, 15, audio=(16000, 1, "aac"))
    data = bytearray(good.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the Info segment's Duration element: an 8-byte float, in ms
    assert at > 0
    data[at + 3:at + 11] = struct.pack(">d", 2.0**31 * 1000)
    path = media / "dur_damaged.mkv"
    path.write_bytes(bytes(data))
    with av.open(str(path)) as c:
        assert c.duration / 1e6 == 2.0**31  # what the header says
    d = probe_duration(path)
    assert d == pytest.approx(3.0, abs=0.07)
    clip = decode_clip(path)
    assert clip.duration == d and indices(clip) == expected_indices(0, d, 15, 45)
    assert segment_windows(d, 2.0) == [(0.0, 2.0), (2.0, d)]


def test_very_short_clip_repeats_frames(media):
    path = mediagen.write_video(media / "short.mp4", 0.2, 64, 48, 15, audio=(16000, 1, "aac"))  # 3 frames
    clip = decode_clip(path)
    assert clip.frames.shape == (16, 3, 112, 112)
    got = indices(clip)
    assert got == sorted(got) and set(got) == {0, 1, 2}
    assert len(clip.audio) == pytest.approx(3200, abs=40)


@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv444p"), ("mjpeg", "yuvj444p")])
def test_odd_frame_size(media, codec, pix_fmt):
    path = mediagen.write_video(media / f"odd_{codec}.mkv", 0.5, 97, 61, 10, codec=codec, pix_fmt=pix_fmt)
    clip = decode_clip(path, config=DecodeConfig(num_frames=4, height=61, width=97))
    assert (clip.width, clip.height) == (97, 61)
    assert clip.frames.shape == (4, 3, 61, 97)
    assert indices(clip) == expected_indices(0, 0.5, 10, 5, T=4)


def test_large_frame_and_max_pixels(media):
    path = mediagen.write_video(media / "uhd.mp4", 0.1, 3840, 2160, 20, options={"preset": "ultrafast"})  # 2 frames
    clip = decode_clip(path, config=DecodeConfig(num_frames=2))
    assert (clip.width, clip.height) == (3840, 2160) and indices(clip) == [0, 1]
    with pytest.raises(MediaError, match=r"3840x2160 = 8294400 pixels exceeds max_pixels=2073600"):
        decode_clip(path, config=DecodeConfig(max_pixels=1920 * 1080))


def test_rotation_metadata_is_applied(media):
    # left half red, right half blue in the coded picture; rotation 90 (counter-clockwise)
    import av

    path = media / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv444p"
        s.set_display_rotation(90)
        img = np.zeros((32, 64, 3), np.uint8)
        img[:, :32] = (220, 0, 0)
        img[:, 32:] = (0, 0, 220)
        for i in range(3):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    clip = decode_clip(path, config=DecodeConfig(num_frames=2, height=64, width=32))
    assert (clip.width, clip.height) == (32, 64)  # displayed portrait
    f = clip.frames[0].astype(int)  # [3, 64, 32]: left half went to the bottom
    assert f[0, 40:].mean() > 150 and f[2, 40:].mean() < 60
    assert f[2, :24].mean() > 150 and f[0, :24].mean() < 60
    # max_side keeps the displayed aspect ratio (portrait), scales down, never up
    clip = decode_clip(path, config=DecodeConfig(num_frames=2, max_side=32))
    assert clip.frames.shape == (2, 3, 32, 16) and clip.frames[0, 0, 24:].mean() > 150
    assert decode_clip(path, config=DecodeConfig(num_frames=1, max_side=640)).frames.shape == (1, 3, 64, 32)
    with pytest.raises(MediaError, match="invalid DecodeConfig"):
        decode_clip(path, config=DecodeConfig(max_side=1))


# ----------------------------------------------------------------------------- sources


def test_bytes_and_file_like_sources(av_clip):
    ref = decode_clip(av_clip, 0.5, 1.5)
    data = av_clip.read_bytes()
    from_bytes = decode_clip(data, 0.5, 1.5)
    assert from_bytes.source == f"<bytes: {len(data)} B>"
    with open(av_clip, "rb") as f:
        from_file = decode_clip(f, 0.5, 1.5)
    assert from_file.source == str(av_clip)
    from_bytesio = decode_clip(io.BytesIO(data), 0.5, 1.5)
    for c in (from_bytes, from_file, from_bytesio):
        np.testing.assert_array_equal(c.frames, ref.frames)
        np.testing.assert_array_equal(c.audio, ref.audio)


# ----------------------------------------------------------------------------- limits


def test_max_duration(av_clip):
    cfg = DecodeConfig(max_duration_s=1.0)
    with pytest.raises(MediaError, match=r"2\.0 s long, over max_duration_s=1; pass a window"):
        decode_clip(av_clip, config=cfg)
    assert decode_clip(av_clip, 0.5, 1.0, config=cfg).end == 1.0
    with pytest.raises(MediaError, match=r"window \[0, 1.5\) is 1.5 s long, over max_duration_s=1"):
        decode_clip(av_clip, 0.0, 1.5, config=cfg)


def test_timeout(av_clip):
    with pytest.raises(MediaError, match=r"timed out after 1e-09 s \(timeout_s\)"):
        decode_clip(av_clip, config=DecodeConfig(timeout_s=1e-9))


# ----------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def hostile(media) -> dict[str, Path]:
    return mediagen.hostile_files(media / "hostile")


EXPECTED_CAUSE = {
    "empty": "empty file",
    "text": "not a readable media file",
    "random": "not a readable media file",
    "truncated_third": "not a readable media file",
    "truncated_first_frame": "no decodable",
    "header_only": "no decodable",
    "ftyp_only": "not a readable media file",
    "corrupt_middle": "corrupt",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CAUSE))
def test_hostile_files_raise_media_error(hostile, name):
    path = hostile[name]
    for source in (path, path.read_bytes()):
        with pytest.raises(MediaError) as info:
            decode_clip(source)
        assert EXPECTED_CAUSE[name] in info.value.cause or (name == "empty" and "empty input" in info.value.cause)
        assert str(info.value).startswith(info.value.source + ": ")
    assert info.value.source.startswith("<bytes")


def test_missing_path_and_empty_bytes(media):
    with pytest.raises(MediaError, match="nope.mp4: no such file"):
        decode_clip(media / "nope.mp4")
    with pytest.raises(MediaError, match=r"<bytes: 0 B>: empty input"):
        decode_clip(b"")


def test_paths_that_are_not_files(media, tmp_path):
    import os

    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(MediaError, match=r"folder.mp4: is a directory, not a media file"):
        decode_clip(tmp_path / "folder.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")  # opening it to read would wait for a writer forever
    with pytest.raises(MediaError, match=r"pipe.mp4: not a regular file \(a pipe, socket or device\)"):
        decode_clip(tmp_path / "pipe.mp4")


def test_playlists_in_uploads_open_no_local_files(av_clip, tmp_path, monkeypatch):
    """An ffconcat script or HLS playlist makes FFmpeg open the files it names. A local path is
    the user's own (it works); bytes and file objects are uploads and remote files, which
    must not reach files on this machine."""
    import shutil

    shutil.copy(av_clip, tmp_path / "secret.mp4")
    script = tmp_path / "list.ffconcat"
    script.write_text("ffconcat version 1.0\nfile 'secret.mp4'\n")
    playlist = tmp_path / "list.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nsecret.mp4\n#EXT-X-ENDLIST\n")
    monkeypatch.chdir(tmp_path)  # relative names resolve here
    assert decode_clip(script).frames.shape == (16, 3, 112, 112)
    for path in (script, playlist):
        for upload in (path.read_bytes(), io.BytesIO(path.read_bytes())):
            with pytest.raises(MediaError, match="not a readable media file"):
                decode_clip(upload)


def test_hostile_files_never_crash_the_process(hostile):
    """Decode every hostile file in a fresh interpreter: only MediaError, no signal, no other exception."""
    code = (
        "import sys\n"
        "from mmsa_ray.media import decode_clip, MediaError\n"
        "for p in sys.argv[1:]:\n"
        "    for src in (p, open(p, 'rb').read()):\n"
        "        try:\n"
        "            decode_clip(src)\n"
        "        except MediaError:\n"
        "            pass\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, *map(str, hostile.values())], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_damaged_files_decode_or_raise_media_error(media):
    """Seeded damage (mediagen.mutate) to every container/codec family, 12 copies each, a third
    decoded as a window: each gives a well-formed Clip or a MediaError, in a fresh interpreter
    (a crash or hang in FFmpeg fails the test, not just an exception)."""
    d = media / "damaged"
    d.mkdir()
    bases = [
        mediagen.write_video(d / "b.mp4", 2.0, 160, 120, 15, audio=(44100, 2, "aac"), pattern="scene",
                             options={"preset": "medium"}),
        mediagen.write_video(d / "b_fast.mp4", 2.0, 160, 120, 15, audio=(44100, 1, "aac"), pattern="scene",
                             container_options={"movflags": "faststart"}),
        # timestamps from 10 s: the Matroska duration is read from the file's tail
        mediagen.write_video(d / "b.mkv", 2.0, 160, 120, 15, audio=(48000, 1, "aac"), pattern="scene", start=10.0),
        mediagen.write_video(d / "b.webm", 2.0, 160, 120, 15, codec="libvpx-vp9", audio=(48000, 2, "libopus"),
                             pattern="scene"),
        mediagen.write_video(d / "b.avi", 2.0, 160, 120, 15, codec="mjpeg", audio=(22050, 1, "libmp3lame"),
                             pattern="scene"),
        mediagen.write_video(d / "b.ts", 2.0, 160, 120, 15, audio=(48000, 2, "aac"), pattern="scene"),
        mediagen.write_audio(d / "b.m4a", 1.5, 44100, 2),
        mediagen.write_audio(d / "b.wav", 1.5, 16000, 1),
    ]
    rng = np.random.default_rng(7)
    damaged = []
    for base in bases:
        data = base.read_bytes()
        for k in range(12):
            kind = mediagen.MUTATIONS[k % len(mediagen.MUTATIONS)]
            p = d / f"{base.stem}_{k}_{kind}{base.suffix}"
            p.write_bytes(mediagen.mutate(data, kind, rng))
            damaged.append(f"{p}|{'0.5,1.5' if k % 3 == 2 else ''}")
    code = (
        "import sys, collections\n"
        "import numpy as np\n"
        "from mmsa_ray.media import decode_clip, DecodeConfig, MediaError\n"
        "seen = collections.Counter()\n"
        "for arg in sys.argv[1:]:\n"
        "    path, window = arg.split('|')\n"
        "    start, end = map(float, window.split(',')) if window else (None, None)\n"
        "    try:\n"
        "        c = decode_clip(path, start, end, DecodeConfig(timeout_s=20))\n"
        "    except MediaError as e:\n"
        "        assert e.cause and str(e).startswith(path + ': '), str(e)\n"
        "        seen['MediaError'] += 1\n"
        "        continue\n"
        "    assert c.has_video or c.has_audio, path\n"
        "    if c.has_video:\n"
        "        assert c.frames.shape == (16, 3, 112, 112) and c.frames.dtype == np.uint8, (path, c.frames.shape)\n"
        "    if c.has_audio:\n"
        "        assert c.audio.dtype == np.float32 and c.audio.ndim == 1 and np.isfinite(c.audio).all(), path\n"
        "    seen['clip'] += 1\n"
        "print(seen['clip'], seen['MediaError'])\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, *damaged], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    clips, errors = map(int, r.stdout.split())
    assert clips + errors == len(damaged) == 96
    assert clips > 0 and errors > 0  # the damage both spares some files and breaks others


# ----------------------------------------------------------------------------- frame skipping is exact


def _full_decode(path: Path, height: int, width: int) -> dict[float, tuple[np.ndarray, int]]:
    """Every frame of a full decode: time (s) -> (uint8 [3, H, W] RGB, AVPictureType 1 I / 2 P / 3 B)."""
    import av

    out = {}
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for f in c.decode(vs):
            img = f.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA").transpose(2, 0, 1)
            out[round(float(f.pts * vs.time_base), 6)] = (img, int(f.pict_type))
    return out


@pytest.mark.parametrize("ref", [1, 3])
def test_skipped_frames_leave_sampled_frames_exact(media, ref):
    # 4 s at 30 fps, one keyframe, T = 8 (15 frames per sample). x264 ref=1: P-frames only
    # reference I/P frames, so every B-frame (b-pyramid references too) is skipped and the
    # samples land on I/P frames; ref=3: P-frames may reference B-frames, so only
    # non-reference frames are skipped. Either way each sampled frame equals a full decode's.
    # texture: real motion, so a P-frame's blocks do pick a B-frame reference when allowed
    path = mediagen.write_video(media / f"bskip{ref}.mp4", 4.0, 160, 96, 30, pattern="texture",
                                options={"preset": "medium",
                                         "x264-params": f"ref={ref}:bframes=3:b-adapt=0:b-pyramid=normal"})
    clip = decode_clip(path, config=DecodeConfig(num_frames=8, height=32, width=48))
    full = _full_decode(path, 32, 48)
    types = []
    for img, t in zip(clip.frames, clip.frame_times, strict=True):
        ref_img, kind = full[round(float(t), 6)]
        np.testing.assert_array_equal(img, ref_img)
        types.append(kind)
    assert 3 in {k for _, k in full.values()}  # the clip has B-frames to skip
    if ref == 1:
        assert 3 not in types, types
    got, want = np.round(clip.frame_times * 30).astype(int), expected_indices(0, 4.0, 30, 120, T=8)
    assert all(abs(w - g) <= 2 for g, w in zip(got, want, strict=True)), (got, want)  # the nearest decoded frame


@pytest.mark.parametrize("ref", [1, 3])
def test_short_window_skips_only_frames_before_it(media, ref):
    # a 0.5 s window (15 frames, T = 8: under 4 frames per sample) late in a one-keyframe
    # clip: frames before the window are decoded only as references (non-reference ones
    # skipped), inside it every frame is decoded, so each sample is exactly the frame
    # showing at its time, as in a full decode
    path = mediagen.write_video(media / f"late{ref}.mp4", 4.0, 160, 96, 30, pattern="texture",
                                options={"preset": "medium",
                                         "x264-params": f"ref={ref}:bframes=3:b-adapt=0:b-pyramid=normal"})
    full = _full_decode(path, 32, 48)
    start, end = 3.0, 3.5
    clip = decode_clip(path, start, end, config=DecodeConfig(num_frames=8, height=32, width=48))
    want = [float(k) / 30 for k in expected_indices(start, end, 30, 120, T=8)]
    np.testing.assert_allclose(clip.frame_times, want, atol=1e-6)
    for img, t in zip(clip.frames, clip.frame_times, strict=True):
        np.testing.assert_array_equal(img, full[round(float(t), 6)][0])
    assert 3 in {k for _, k in full.values()}  # there were B-frames before the window to skip


# ----------------------------------------------------------------------------- streams as real encoders structure them


def _assert_exact_showing_frames(path: Path, clip: Clip, start: float, end: float, max_off: int = 0) -> None:
    """Each sampled frame equals a full decode's frame at its time, and is the frame showing at
    its sample time, or at most max_off frames from it."""
    import av

    with av.open(str(path)) as c:
        t0 = c.start_time / 1e6 if c.start_time is not None else 0.0
    full = _full_decode(path, clip.frames.shape[2], clip.frames.shape[3])
    times = np.array(sorted(full)) - t0
    samples = start + (np.arange(len(clip.frame_times)) + 0.5) * (end - start) / len(clip.frame_times)
    for img, t, s in zip(clip.frames, clip.frame_times, samples, strict=True):
        np.testing.assert_array_equal(img, full[round(float(t + t0), 6)][0])
        showing = np.searchsorted(times, s + 1e-5) - 1  # full decode times are rounded to 1 us
        assert abs(np.searchsorted(times, t - 1e-5) - showing) <= max_off, (t, s)


@pytest.mark.parametrize("ext", ["mp4", "ts"])
def test_intra_refresh_stream(media, ext):
    """x264 intra refresh: one IDR frame, then P-frames that refresh a column at a time; the
    container flags recovery points (mp4 sync samples, TS random access) on P-frames that
    need the second of frames before them. Decoding must not start at them, neither when
    skipping keyframe intervals without samples nor when seeking to a window."""
    path = mediagen.write_video(media / f"refresh.{ext}", 6.0, 96, 64, 15, pattern="texture",
                                options={"x264-params": "intra-refresh=1:keyint=15"})
    config = DecodeConfig(num_frames=4, height=32, width=48)  # samples in 4 of 6 refresh periods
    clip = decode_clip(path, config=config)  # B-frames skipped: each sample the nearest decoded frame
    _assert_exact_showing_frames(path, clip, 0.0, clip.duration, max_off=2)
    _assert_exact_showing_frames(path, decode_clip(path, 2.2, 3.2, config=config), 2.2, 3.2)


def test_long_b_frame_runs_are_decoded(media):
    """x264 --bframes 16 without b-pyramid: 16 B-frames in a row, none a reference. Skipping
    them would leave samples up to 8 frames from their time; the clip is decoded again with
    nothing skipped, and every sample is the frame showing at its time."""
    path = mediagen.write_video(media / "bframes16.mp4", 4.0, 96, 64, 30, pattern="texture",
                                options={"preset": "medium", "x264-params": "bframes=16:b-adapt=0:b-pyramid=none"})
    config = DecodeConfig(num_frames=8, height=32, width=48)  # 15 frames per sample: skipping is tried
    _assert_exact_showing_frames(path, decode_clip(path, config=config), 0.0, 4.0)


def test_main_video_track_not_a_thumbnail(media):
    """An mp4 whose first video track is a small preview: the clip is the largest track, as players pick."""
    import av

    path = media / "thumbnail_first.mp4"
    with av.open(str(path), "w") as c:
        tracks = [c.add_stream("libx264", rate=10) for _ in range(2)]
        for track, (w, h) in zip(tracks, [(32, 24), (160, 120)], strict=True):
            track.width, track.height, track.pix_fmt = w, h, "yuv420p"
        for i in range(20):
            for track, pattern in zip(tracks, ["texture", "index"], strict=True):
                frame = av.VideoFrame.from_ndarray(
                    mediagen._picture(i, i / 10, track.width, track.height, pattern, np.random.default_rng(0)),
                    format="rgb24")
                frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
                for p in track.encode(frame):
                    c.mux(p)
        for track in tracks:
            for p in track.encode(None):
                c.mux(p)
    clip = decode_clip(path)
    assert (clip.width, clip.height) == (160, 120)
    assert indices(clip) == expected_indices(0, 2.0, 10, 20)


def test_audio_track_without_packets(media):
    """A declared audio track that holds no audio (a recorder that never got sound): no audio, not an error."""
    import av

    path = media / "mute_track.mkv"
    with av.open(str(path), "w") as c:
        video = c.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = c.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(mediagen._picture(i, i / 10, 64, 48, "index", None), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
            for p in video.encode(frame):
                c.mux(p)
        for p in [*video.encode(None), *audio.encode(None)]:
            c.mux(p)
    clip = decode_clip(path)
    assert clip.audio is None and not clip.has_audio
    assert indices(clip) == expected_indices(0, 2.0, 10, 20)


def test_dv_frame_rate(media):
    """Raw DV (.dv) states an average rate of 60000 fps (its time base); the frame rate is 25."""
    import av

    path = media / "pal.dv"
    with av.open(str(path), "w", format="dv") as c:
        video = c.add_stream("dvvideo", rate=25)
        video.width, video.height, video.pix_fmt = 720, 576, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(mediagen._picture(i, i / 25, 720, 576, "index", None), format="rgb24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 25)
            for p in video.encode(frame):
                c.mux(p)
        for p in video.encode(None):
            c.mux(p)
    clip = decode_clip(path)
    assert clip.fps == 25.0 and clip.duration == pytest.approx(1.0)
    assert indices(clip) == expected_indices(0, 1.0, 25, 25)


def _beep_onset(audio: np.ndarray, rate: int = 16000) -> float:
    """Seconds into `audio` where a 1760 Hz beep starts (its energy first passes half its peak)."""
    hop = 32
    frames = np.lib.stride_tricks.sliding_window_view(audio, 256)[::hop]
    k = np.exp(-2j * np.pi * 1760 * np.arange(256) / rate)
    power = np.abs(frames @ k)
    return float(np.argmax(power > 0.5 * power.max()) * hop + 128) / rate


def test_adpcm_wav_window_is_on_time(media):
    """ADPCM wav as FFmpeg 5.1 (Debian 12's ffmpeg) writes it states a byte rate that does not
    fit its blocks; FFmpeg seeks by it and lands at the wrong time (its own ffmpeg -ss is
    late too). Such files are decoded from the start, and a window's audio is where it belongs."""
    import av

    rate = 22050
    signal = np.zeros((1, 4 * rate), np.float32)
    t = np.arange(int(0.1 * rate)) / rate
    signal[0, 2 * rate:2 * rate + len(t)] = 0.5 * np.sin(2 * np.pi * 1760 * t)  # a beep at 2.0 s
    path = media / "adpcm.wav"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("adpcm_ima_wav", rate=rate)
        stream.layout = "mono"
        mediagen._encode_audio(c, stream, signal)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"fmt " and data[22:28] == (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
    data[28:32] = (16000).to_bytes(4, "little")  # the fmt chunk's byte rate, as FFmpeg 5.1 writes it
    path.write_bytes(bytes(data))
    assert _beep_onset(decode_clip(path).audio) == pytest.approx(2.0, abs=0.01)
    assert _beep_onset(decode_clip(path, 1.3, 3.0).audio) == pytest.approx(0.7, abs=0.01)


def test_window_audio_starts_settled(media):
    """Opus needs 80 ms of audio before a point to decode it right: a window's first samples
    equal the whole clip's (up to the sub-millisecond rounding of WebM's timestamps), not a
    ramp or noise from a decoder started at the window."""
    path = mediagen.write_video(media / "opus.webm", 3.0, 64, 48, 15, codec="libvpx-vp9", audio=(48000, 2, "libopus"),
                                options={"g": "15"})
    whole = decode_clip(path).audio

    def error(window, i, lag, a, b):  # window[a:b] against the whole clip's samples from i + lag on
        return np.abs(window[a:b] - whole[i + lag + a:i + lag + b]).max()

    for start in (1.0, 2.0):  # on a keyframe
        window = decode_clip(path, start, start + 0.9).audio
        i = int(start * 16000)
        errors = {lag: error(window, i, lag, 2000, 6000) for lag in range(-16, 17)}
        lag = min(errors, key=errors.get)  # within 1 ms (the tone's period is 2.3 ms)
        assert error(window, i, lag, 2000, 6000) < 0.01
        assert error(window, i, lag, 0, 640) < 0.02  # the first 40 ms too


def test_packed_bitstream_placeholder_is_not_a_clean_start():
    """Xvid/DivX AVIs with B-frames (packed bitstream) follow each I-frame with a 6-byte
    N-VOP (not coded) that their index flags as a keyframe; decoding from it has no
    reference. A coded I-VOP is a clean start, the placeholder is not."""
    import av

    frames = [av.VideoFrame.from_ndarray(mediagen._picture(i, i / 10, 64, 48, "texture", np.random.default_rng(i)),
                                         format="rgb24") for i in range(3)]
    encoder = av.CodecContext.create("mpeg4", "w")
    encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = 64, 48, "yuv420p", fractions.Fraction(1, 10)
    packets = [p for i, f in enumerate(frames) for p in encoder.encode(f)] + list(encoder.encode(None))
    stream = type("Stream", (), {"codec_context": type("Context", (), {"name": "mpeg4", "extradata": b""})()})()
    intra = packets[0]
    assert intra.is_keyframe and bitstream.clean_start(stream, intra)
    placeholder = av.Packet(b"\x00\x00\x01\xb6\x15\x7f")  # vop_coding_type 0 (I), vop_coded 0
    assert not bitstream.clean_start(stream, placeholder)
