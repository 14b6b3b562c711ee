"""features.py: frames -> normalized video tensor, waveform -> log-mel, text -> token ids,
one clip's feature dict and collation. Values are checked, not only shapes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mmsa_ray.features import (
    KINETICS_MEAN,
    KINETICS_STD,
    FeatureConfig,
    clip_features,
    collate,
    log_mel,
    mel_transform,
    tokenize,
    video_features,
)

SR = 16000


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from mmsa_ray.model import minilm_path

    return AutoTokenizer.from_pretrained(str(minilm_path()))


def _tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR), dtype=np.float64) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _clip(frames=None, audio=None, sample_rate=SR):
    from mmsa_ray.media import Clip

    n = 0 if frames is None else frames.shape[0]
    return Clip(
        source="test.mp4",
        frames=frames,
        audio=audio,
        sample_rate=sample_rate,
        start=0.0,
        end=2.0,
        duration=2.0,
        fps=None if frames is None else 15.0,
        width=None if frames is None else frames.shape[3],
        height=None if frames is None else frames.shape[2],
        frame_times=np.linspace(0, 2, n, endpoint=False),
    )


# ----------------------------------------------------------------------------- video


def test_video_features_layout_and_kinetics_normalization():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 4, 3, 6, 5), dtype=np.uint8)  # B, T, 3, H, W
    frames[0, 1, :, 2, 3] = (0, 128, 255)
    out = video_features(frames)
    assert out.shape == (2, 3, 4, 6, 5) and out.dtype == np.float32
    want = ((frames.transpose(0, 2, 1, 3, 4) / 255.0 - KINETICS_MEAN.reshape(1, 3, 1, 1, 1))
            / KINETICS_STD.reshape(1, 3, 1, 1, 1))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # channel c of pixel (t=1, y=2, x=3): R=0, G=128, B=255
    np.testing.assert_allclose(
        out[0, :, 1, 2, 3],
        [(0 - 0.43216) / 0.22803, (128 / 255 - 0.394666) / 0.22145, (1 - 0.37645) / 0.216989],
        rtol=1e-5,
    )
    assert -2.0 < out.min() and out.max() < 3.0


def test_video_features_rejects_wrong_layout_or_dtype():
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        video_features(np.zeros((4, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        video_features(np.zeros((1, 4, 3, 8, 8), dtype=np.float32))


# ----------------------------------------------------------------------------- audio


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_log_mel_of_a_tone_peaks_in_its_mel_band(freq):
    import torchaudio

    config = FeatureConfig()
    mel = log_mel([_tone(freq, 3.0)], config)
    assert mel.shape == (1, 1, 64, 300) and mel.dtype == np.float32
    # The band whose triangular filter weights this frequency most (torchaudio's defaults:
    # HTK mel scale, 0 .. sample_rate/2).
    fb = torchaudio.functional.melscale_fbanks(config.n_fft // 2 + 1, 0.0, SR / 2, config.n_mels, SR).numpy()
    expected = int(fb[int(round(freq * config.n_fft / SR))].argmax())
    valid = mel[0, 0, :, 5:90]  # 3 s = 94 frames; skip the edges
    peaks = valid.argmax(axis=0)
    assert np.all(np.abs(peaks - expected) <= 1), (expected, np.unique(peaks))
    assert np.bincount(peaks).argmax() == expected


def test_log_mel_matches_torchaudio_and_normalizes_over_valid_frames():
    import torch
    import torchaudio

    config = FeatureConfig()
    wave = np.random.default_rng(0).normal(0, 0.1, SR * 2).astype(np.float32)  # 2 s -> 63 frames
    out = log_mel([wave], config)[0, 0]
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=SR, n_fft=1024, hop_length=512, n_mels=64)
    ref = mel(torch.from_numpy(wave)).numpy()
    ref = np.log(ref + 1e-6)
    n = ref.shape[1]
    assert n == 1 + (2 * SR) // 512 == 63
    ref = (ref - ref.mean()) / (ref.std() + 1e-5)
    np.testing.assert_allclose(out[:, :n], ref, rtol=1e-4, atol=1e-4)
    assert abs(out[:, :n].mean()) < 1e-4 and abs(out[:, :n].std() - 1) < 1e-3
    assert not out[:, n:].any(), "padding frames must stay 0"


def test_log_mel_of_long_audio_is_its_first_300_frames():
    """The waveform is cut before the STFT; the frames kept must equal the whole STFT's."""
    import torch

    config = FeatureConfig()
    wave = np.random.default_rng(1).normal(0, 0.1, SR * 12).astype(np.float32)  # 12 s > 9.6 s
    out = log_mel([wave], config)[0, 0]
    full = mel_transform(SR, 1024, 512, 64)(torch.from_numpy(wave)).numpy()[:, :300]
    full = np.log(full + 1e-6)
    full = (full - full.mean()) / (full.std() + 1e-5)
    np.testing.assert_allclose(out, full, rtol=1e-4, atol=1e-4)
    assert np.count_nonzero(out[:, -1]) > 0


def test_log_mel_silence_short_and_empty_waveforms():
    config = FeatureConfig()
    silent, short, empty = np.zeros(SR, np.float32), _tone(440, 0.01), np.zeros(0, np.float32)
    out = log_mel([silent, short, empty], config)
    assert out.shape == (3, 1, 64, 300) and np.isfinite(out).all()
    assert not out[0].any(), "a constant (silent) spectrogram normalizes to 0"
    assert out[1, 0, :, :1].any() and not out[1, 0, :, 2:].any()  # 160 samples -> 1 frame
    assert not out[2].any()
    with pytest.raises(ValueError, match="1-D"):
        log_mel([np.zeros((2, 100), np.float32)], config)
    with pytest.raises(ValueError, match="NaN"):
        log_mel([np.full(1000, np.nan, np.float32)], config)


def test_mel_transform_is_built_once():
    assert mel_transform(SR, 1024, 512, 64) is mel_transform(SR, 1024, 512, 64)


def test_feature_config_validation():
    with pytest.raises(ValueError, match="n_mels"):
        FeatureConfig(n_mels=0)
    with pytest.raises(ValueError, match="hop_length"):
        FeatureConfig(n_fft=256, hop_length=512)


# ----------------------------------------------------------------------------- text


def test_tokenize_absent_present_and_long_texts(tokenizer):
    texts = [None, "", "   \n", "Hello there!", "word " * 400]
    out = tokenize(texts, tokenizer, 128)
    assert set(out) == {"input_ids", "attention_mask"}
    for v in out.values():
        assert v.shape == (5, 128) and v.dtype == np.int64
    pad = tokenizer.pad_token_id
    for i in range(3):  # absent
        assert not out["attention_mask"][i].any() and (out["input_ids"][i] == pad).all()
    ids = out["input_ids"][3]
    n = int(out["attention_mask"][3].sum())
    assert list(ids[:n]) == tokenizer("Hello there!")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id and (ids[n:] == pad).all()
    assert out["attention_mask"][4].all() and out["input_ids"][4, -1] == tokenizer.sep_token_id  # truncated


def test_tokenize_from_many_threads(tokenizer):
    """Serve tokenizes in a thread pool; fast tokenizers must not fail ("Already borrowed")."""
    want = tokenize(["same words here"], tokenizer, 32)["input_ids"]
    errors, results = [], []

    def work(i):
        try:
            for _ in range(30):
                texts = ["same words here", None] if i % 2 else ["same words here"]
                results.append(tokenize(texts, tokenizer, 32)["input_ids"][0])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all((r == want[0]).all() for r in results)


# ----------------------------------------------------------------------------- one clip, collate


def test_clip_features_all_modalities(tokenizer):
    from mmsa_ray.media import DecodeConfig

    decode = DecodeConfig(num_frames=4, height=16, width=20)
    frames = np.full((4, 3, 16, 20), 200, dtype=np.uint8)
    feats = clip_features(_clip(frames, _tone(440, 2.0)), "I am happy", tokenizer, FeatureConfig(), decode=decode)
    assert set(feats) == {"video", "audio", "input_ids", "attention_mask", "mask"}
    assert feats["video"].shape == (3, 4, 16, 20) and feats["video"].dtype == np.float32
    np.testing.assert_allclose(feats["video"][:, 0, 0, 0], (200 / 255 - KINETICS_MEAN) / KINETICS_STD, rtol=1e-5)
    assert feats["audio"].shape == (1, 64, 300) and feats["audio"].dtype == np.float32 and feats["audio"].any()
    assert feats["input_ids"].shape == (128,) and feats["input_ids"].dtype == np.int64
    assert feats["attention_mask"].dtype == np.int64 and feats["attention_mask"].sum() > 2
    assert feats["mask"].dtype == np.float32 and list(feats["mask"]) == [1.0, 1.0, 1.0]


def test_clip_features_absent_modalities(tokenizer):
    from mmsa_ray.media import DecodeConfig

    decode = DecodeConfig(num_frames=4, height=16, width=20)
    config = FeatureConfig()
    # audio-only file, no transcript: text and video absent, video zeros of the decode shape
    feats = clip_features(_clip(None, _tone(440, 1.0)), None, tokenizer, config, decode=decode)
    assert list(feats["mask"]) == [0.0, 1.0, 0.0]
    assert feats["video"].shape == (3, 4, 16, 20) and not feats["video"].any()
    # video without an audio stream, blank transcript
    frames = np.zeros((4, 3, 16, 20), dtype=np.uint8)
    feats = clip_features(_clip(frames, None), "  ", tokenizer, config, decode=decode)
    assert list(feats["mask"]) == [0.0, 0.0, 1.0] and not feats["audio"].any() and not feats["attention_mask"].any()
    # an audio stream that decodes to zero samples is absent; a silent one is present
    assert feats["mask"][1] == 0
    feats = clip_features(_clip(frames, np.zeros(0, np.float32)), "hi", tokenizer, config, decode=decode)
    assert list(feats["mask"]) == [1.0, 0.0, 1.0]
    feats = clip_features(_clip(frames, np.zeros(SR, np.float32)), "hi", tokenizer, config, decode=decode)
    assert list(feats["mask"]) == [1.0, 1.0, 1.0] and np.isfinite(feats["audio"]).all()


def test_clip_features_rejects_wrong_sample_rate(tokenizer):
    with pytest.raises(ValueError, match="22050 Hz"):
        clip_features(_clip(None, _tone(440, 1.0), sample_rate=22050), None, tokenizer, FeatureConfig())


def test_collate_stacks_and_names_mismatches():
    a = {"x": np.zeros((2, 3), np.float32), "m": np.ones(3, np.float32)}
    b = {"x": np.ones((2, 3), np.float32), "m": np.zeros(3, np.float32)}
    out = collate([a, b])
    assert out["x"].shape == (2, 2, 3) and out["m"].shape == (2, 3) and out["x"][1].all()
    with pytest.raises(ValueError, match="'x' has different shapes"):
        collate([a, {"x": np.zeros((2, 4), np.float32), "m": b["m"]}])
    with pytest.raises(ValueError, match="keys"):
        collate([a, {"x": b["x"]}])
    with pytest.raises(ValueError, match="dtypes"):
        collate([a, {"x": b["x"], "m": b["m"].astype(np.float64)}])
    with pytest.raises(ValueError, match="no items"):
        collate([])
