"""mmsa_ray.train.sample_data: MELD layout, decodable clips, determinism, per-modality separability."""

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from mmsa_ray.labels import EMOTIONS, SENTIMENTS
from mmsa_ray.train.meld import CSV_COLUMNS, SPLITS, check_clips, read_meld
from mmsa_ray.train.sample_data import MARKER, STYLES, SampleConfig, make_sample_data, synth_audio, synth_frames

SIZES = {"train": 3, "dev": 2, "test": 1}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    summary = make_sample_data(root, n_per_class_train=3, n_per_class_dev=2, n_per_class_test=1, seed=7)
    return root, summary


@pytest.fixture(scope="module")
def splits(sample_root):
    root, _ = sample_root
    return {split: read_meld(root, split) for split in SPLITS}


def _decode(path):
    """All frames (uint8 [T,H,W,3]) and audio (float32 [N]) of a clip, plus stream info."""
    with av.open(path) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {
            "video_codec": v.codec_context.name, "audio_codec": a.codec_context.name,
            "fps": float(v.average_rate), "size": (v.width, v.height),
            "sample_rate": a.sample_rate, "channels": a.channels,
            "video_duration": float(v.duration * v.time_base),
        }
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(path) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    return frames, audio, info


def _dominant_hz(audio, sample_rate=16000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * sample_rate / len(audio)


def test_summary_and_layout(sample_root):
    root, summary = sample_root
    for split, n in SIZES.items():
        assert summary.counts[split] == {e: n for e in EMOTIONS}
        assert summary.total(split) == 7 * n
        assert (root / SPLITS[split][0]).is_file() and (root / SPLITS[split][1]).is_dir()
    assert summary.bytes_written == sum(p.stat().st_size for p in root.glob("*/*.mp4"))
    assert not list(root.rglob(".*.tmp"))  # files are renamed into place when complete
    assert "train: 21 clips in train_splits/" in summary.summary()
    with open(root / "train_sent_emo.csv", encoding="utf-8") as fh:
        assert fh.readline().rstrip("\n") == ",".join(CSV_COLUMNS)


def test_round_trip_through_read_meld(splits):
    for split, n in SIZES.items():
        s = splits[split]
        assert len(s) == 7 * n and s.emotion_counts() == {e: n for e in EMOTIONS}
        assert s.videos_found == 7 * n and s.missing == [] and not s.skipped
        assert all(Path(r.path).is_file() for r in s.records)
        assert check_clips(s.records) == []
        for r in s.records:
            assert r.sentiment == STYLES[r.emotion].sentiment
            assert 1.6 - 1e-9 <= r.end_s - r.start_s <= 2.4 + 1e-9
            assert r.transcript and r.speaker
    # Sentiment is a function of the emotion: negative 4, neutral 1, positive 2 per class count.
    assert splits["train"].sentiment_counts() == {"negative": 12, "neutral": 3, "positive": 6}
    assert set(STYLES[e].sentiment for e in EMOTIONS) == set(SENTIMENTS)


def test_clips_decode_with_expected_streams_and_duration(splits):
    cfg = SampleConfig()
    for r in splits["dev"].records[:5]:
        frames, audio, info = _decode(r.path)
        duration = r.end_s - r.start_s  # whole frames, so the CSV times match the clip (to 1 ms rounding)
        assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
        assert info["size"] == (cfg.width, cfg.height) and info["fps"] == cfg.fps
        assert info["sample_rate"] == cfg.sample_rate and info["channels"] == 1
        assert frames.shape == (round(duration * cfg.fps), cfg.height, cfg.width, 3)
        assert info["video_duration"] == pytest.approx(duration, abs=0.002)
        # AAC pads to whole 1024-sample frames (plus encoder delay): at most one frame more.
        assert duration * cfg.sample_rate <= len(audio) <= duration * cfg.sample_rate + 2048 + 16


def test_decode_clip_contract(splits):
    media = pytest.importorskip("mmsa_ray.media", reason="mmsa_ray.media is written in parallel")
    r = splits["dev"].records[0]
    clip = media.decode_clip(r.path)
    assert clip.has_video and clip.has_audio
    assert clip.frames.shape == (16, 3, 112, 112) and clip.frames.dtype == np.uint8
    assert clip.audio.dtype == np.float32 and clip.sample_rate == 16000
    assert clip.duration == pytest.approx(r.end_s - r.start_s, abs=0.15)
    # The clip's mean chromaticity is nearest to its emotion's colour.
    mean_rgb = clip.frames.mean(axis=(0, 2, 3))
    colours = np.array([STYLES[e].colour for e in EMOTIONS], float)
    unit = colours / np.linalg.norm(colours, axis=1, keepdims=True)
    dist = np.linalg.norm(unit - mean_rgb / np.linalg.norm(mean_rgb), axis=1)
    assert EMOTIONS[int(np.argmin(dist))] == r.emotion


def test_same_seed_same_bytes_other_seed_differs(sample_root, tmp_path):
    root, _ = sample_root
    again = tmp_path / "again"
    make_sample_data(again, n_per_class_train=3, n_per_class_dev=2, n_per_class_test=1, seed=7, workers=1)
    for split, (csv_name, dir_name) in SPLITS.items():
        assert (again / csv_name).read_bytes() == (root / csv_name).read_bytes()
        digests = [{p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (r / dir_name).glob("*.mp4")}
                   for r in (root, again)]
        assert digests[0] == digests[1] and len(digests[0]) == 7 * SIZES[split]
    other = tmp_path / "other"
    make_sample_data(other, n_per_class_train=3, n_per_class_dev=2, n_per_class_test=1, seed=8)
    assert (other / "train_sent_emo.csv").read_bytes() != (root / "train_sent_emo.csv").read_bytes()


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y):
    train_x, test_x = np.asarray(train_x, float), np.asarray(test_x, float)
    centroids = np.stack([train_x[np.asarray(train_y) == e].mean(0) for e in EMOTIONS])
    pred = np.argmin(((test_x[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float(np.mean([EMOTIONS[p] == y for p, y in zip(pred, test_y, strict=True)]))


def test_each_modality_separates_emotions(splits):
    """Raw per-modality features + nearest centroid (fit on train) classify every dev clip."""
    feats = {}
    for split in ("train", "dev"):
        rows = []
        for r in splits[split].records:
            frames, audio, _ = _decode(r.path)
            hz = _dominant_hz(audio)
            assert abs(hz / STYLES[r.emotion].pitch_hz - 1) < 0.05, (r.id, r.emotion, hz)
            rows.append((frames.reshape(-1, 3).mean(0), np.log(hz), r.transcript, r.emotion))
        feats[split] = rows
    labels = {s: [row[3] for row in feats[s]] for s in feats}

    video = {s: [row[0] for row in feats[s]] for s in feats}
    assert _nearest_centroid_accuracy(video["train"], labels["train"], video["dev"], labels["dev"]) == 1.0
    audio = {s: [[row[1]] for row in feats[s]] for s in feats}
    assert _nearest_centroid_accuracy(audio["train"], labels["train"], audio["dev"], labels["dev"]) == 1.0

    # Text: counts of each emotion's cue words (chosen here, independently of the templates);
    # neutral has none, so its centroid is the origin.
    text = {s: [_cue_counts(row[2]) for row in feats[s]] for s in feats}
    assert _nearest_centroid_accuracy(text["train"], labels["train"], text["dev"], labels["dev"]) == 1.0


CUE_WORDS = {
    "anger": {"angry", "furious", "mad"},
    "disgust": {"gross", "disgusting", "yuck", "ew", "eww"},
    "fear": {"scared", "afraid", "terrified", "frightened"},
    "joy": {"happy", "delighted", "thrilled", "glad"},
    "sadness": {"sad", "heartbroken", "miserable", "crying", "cry"},
    "surprise": {"wow", "whoa", "unbelievable", "shocked"},
}


def _cue_counts(text):
    words = re.findall(r"[a-z]+", text.lower())
    return [sum(w in cues for w in words) for cues in CUE_WORDS.values()]


def test_every_template_carries_only_its_own_cue_words():
    for emotion, style in STYLES.items():
        for template in style.templates:
            for obj in style.objects:
                counts = dict(zip(CUE_WORDS, _cue_counts(template.format(obj=obj)), strict=True))
                own = counts.pop(emotion, None)
                assert own is None or own >= 1, (emotion, template)
                assert sum(counts.values()) == 0, (emotion, template, obj, counts)


def test_clips_vary_within_a_class():
    rng = np.random.default_rng(0)
    a, b = synth_frames("joy", 4, 96, 128, rng), synth_frames("joy", 4, 96, 128, rng)
    assert a.shape == (4, 96, 128, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)
    # Same hue, different brightness: each clip's mean colour is the style colour times 0.7..1.15
    # (the darker drifting square pulls it below the 0.8 jitter floor).
    colour = np.array(STYLES["joy"].colour, float)
    for clip in (a, b):
        ratio = clip.reshape(-1, 3).mean(0) / colour
        assert np.all((ratio > 0.7) & (ratio < 1.15)), ratio
    x, y = synth_audio("joy", 1.0, 16000, rng), synth_audio("joy", 1.0, 16000, rng)
    assert x.shape == (16000,) and x.dtype == np.float32 and np.abs(x).max() <= 1.0
    assert not np.allclose(x, y)


def test_overwrite_and_sizes(tmp_path):
    make_sample_data(tmp_path, n_per_class_train=1, n_per_class_dev=1, n_per_class_test=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_sample_data(tmp_path, n_per_class_train=1)
    (tmp_path / "train_splits" / "keep.txt").write_text("not ours")
    summary = make_sample_data(tmp_path, n_per_class_train=1, n_per_class_dev=0, n_per_class_test=0, overwrite=True)
    assert summary.total("dev") == 0
    assert sorted(p.name for p in (tmp_path / "dev_splits_complete").iterdir()) == []  # stale clips removed
    assert (tmp_path / "train_splits" / "keep.txt").exists()  # other files untouched
    dev = read_meld(tmp_path, "dev")
    assert len(dev) == 0 and dev.missing == []
    assert Counter(r.emotion for r in read_meld(tmp_path, "train")) == Counter(EMOTIONS)
    assert json.loads((tmp_path / MARKER).read_text())["n_per_class"] == {"train": 1, "dev": 0, "test": 0}
    # A directory with MELD CSVs but no marker (a real MELD copy) is never overwritten.
    (tmp_path / MARKER).unlink()
    with pytest.raises(FileExistsError, match="not written by make_sample_data; refusing"):
        make_sample_data(tmp_path, overwrite=True)
    assert len(list((tmp_path / "train_splits").glob("*.mp4"))) == 7
    with pytest.raises(ValueError, match="even"):
        make_sample_data(tmp_path / "odd", config=SampleConfig(width=127))
    with pytest.raises(ValueError, match="n_per_class_dev must be >= 0"):
        make_sample_data(tmp_path / "neg", n_per_class_dev=-1)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match=r"a_file is a file, not a directory"):
        make_sample_data(tmp_path / "a_file" / "MELD.Raw", n_per_class_train=1)
