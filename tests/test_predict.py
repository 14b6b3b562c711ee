"""predict.py: the one inference path from a checkpoint: preprocessing of real media files
(made with PyAV), prediction rows, model ids, decode limits, dtype handling."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import mediagen
import numpy as np
import pytest
import torch

from mmsa_ray import labels
from mmsa_ray.features import collate
from mmsa_ray.media import MediaError
from mmsa_ray.predict import Predictor, Preprocessing

ROW_KEYS = {"emotion", "emotion_probs", "sentiment", "sentiment_probs", "modalities",
            "text_emotion", "audio_emotion", "video_emotion", "model_id", "no_label_reason", "emotion_uncertain",
            "sentiment_uncertain", "emotion_driver"}


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    return mediagen.clips(tmp_path_factory.mktemp("predict-media"))


def test_from_checkpoint_model_id_device_and_configs(predictor, tiny_checkpoint):
    digest = hashlib.sha256((Path(tiny_checkpoint) / "model.safetensors").read_bytes()).hexdigest()
    assert predictor.model_id == f"{Path(tiny_checkpoint).name}-{digest[:12]}"
    assert predictor.device == torch.device("cpu") and not predictor.model.training
    assert next(predictor.model.parameters()).device.type == "cpu"
    d = predictor.decode_config
    assert (d.num_frames, d.height, d.width) == (8, 64, 64)  # the checkpoint's preprocessing
    with pytest.raises(ValueError, match="dtype"):
        Predictor.from_checkpoint(str(tiny_checkpoint), device="cpu", dtype="fp8")


def test_preprocess_real_files(predictor, media):
    av = predictor.preprocess(str(media["av"]), transcript="Oh my god, that is amazing!")
    assert av["video"].shape == (3, 8, 64, 64) and av["video"].dtype == np.float32
    assert av["audio"].shape == (1, 64, 300) and av["audio"].any()
    assert av["input_ids"].shape == av["attention_mask"].shape == (128,)
    assert list(av["mask"]) == [1.0, 1.0, 1.0]
    # the 440 Hz tone is audible in the mel bands around 440 Hz
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 64, 16000).numpy()
    band = int(fb[round(440 * 1024 / 16000)].argmax())
    valid = av["audio"][0][:, 5:50]
    assert abs(int(np.bincount(valid.argmax(axis=0)).argmax()) - band) <= 1

    video_only = predictor.preprocess(str(media["video_only"]))
    assert list(video_only["mask"]) == [0.0, 0.0, 1.0] and not video_only["audio"].any()
    audio_only = predictor.preprocess(media["audio_only"].read_bytes(), transcript="hello")
    assert list(audio_only["mask"]) == [1.0, 1.0, 0.0]
    assert audio_only["video"].shape == (3, 8, 64, 64) and not audio_only["video"].any()
    # a window of the clip
    window = predictor.preprocess(str(media["av"]), start=0.5, end=1.5)
    assert list(window["mask"]) == [0.0, 1.0, 1.0]


def test_preprocessing_from_checkpoint_equals_the_predictors(predictor, tiny_checkpoint, media):
    pre = Preprocessing.from_checkpoint(str(tiny_checkpoint))
    assert pre.decode_config == predictor.decode_config and pre.feature_config == predictor.feature_config
    a = pre(str(media["av"]), transcript="fine")
    b = predictor.preprocess(str(media["av"]), transcript="fine")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bad_media_raises_media_error(predictor, tmp_path):
    with pytest.raises(MediaError):
        predictor.preprocess(b"this is not a video at all" * 10)
    with pytest.raises(MediaError):
        predictor.preprocess(str(tmp_path / "missing.mp4"))


def test_decode_config_is_settable_and_used(tiny_checkpoint, media):
    p = Predictor.from_checkpoint(str(tiny_checkpoint), device="cpu")
    p.decode_config = dataclasses.replace(p.decode_config, max_duration_s=0.5)
    assert p.preprocessing.decode_config.max_duration_s == 0.5
    with pytest.raises(MediaError):
        p.preprocess(str(media["av"]))  # 2 s > 0.5 s


def test_predict_batch_rows(predictor, media):
    feats = [
        predictor.preprocess(str(media["av"]), transcript="I can't believe it!"),
        predictor.preprocess(str(media["video_only"])),
        predictor.preprocess(str(media["audio_only"]), transcript="ok"),
    ]
    batch = collate(feats)
    batch["id"] = np.array(["a", "b", "c"])  # extra columns are ignored
    rows = predictor.predict_batch(batch)
    assert len(rows) == 3
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["model_id"] == predictor.model_id and row["no_label_reason"] is None
        assert len(row["emotion_probs"]) == 7 and len(row["sentiment_probs"]) == 3
        assert all(type(p) is float for p in row["emotion_probs"] + row["sentiment_probs"])
        assert math.isclose(sum(row["emotion_probs"]), 1.0, abs_tol=1e-5)
        assert math.isclose(sum(row["sentiment_probs"]), 1.0, abs_tol=1e-5)
        assert row["emotion"] == labels.EMOTIONS[int(np.argmax(row["emotion_probs"]))]
        assert row["sentiment"] == labels.SENTIMENTS[int(np.argmax(row["sentiment_probs"]))]
    assert rows[0]["modalities"] == ["text", "audio", "video"]
    assert rows[1]["modalities"] == ["video"] and rows[1]["text_emotion"] is None and rows[1]["audio_emotion"] is None
    assert rows[1]["video_emotion"] in labels.EMOTIONS
    assert rows[2]["modalities"] == ["text", "audio"] and rows[2]["video_emotion"] is None

    # the probabilities are the model's softmax, and do not depend on the batch
    with torch.no_grad():
        out = predictor.model({k: torch.from_numpy(v) for k, v in collate(feats).items()})
    np.testing.assert_allclose(np.array([r["emotion_probs"] for r in rows]), torch.softmax(out["emotion"], -1).numpy(),
                               atol=1e-6)
    own = out["per_modality"]["video"]["emotion"][0].argmax().item()
    assert rows[0]["video_emotion"] == labels.EMOTIONS[own]
    # the driver: of the present modalities, the one whose own head backs the label's emotion most
    top = labels.EMOTIONS.index(rows[0]["emotion"])
    backing = {m: torch.softmax(out["per_modality"][m]["emotion"][0], -1)[top].item() for m in labels.MODALITIES}
    assert rows[0]["emotion_driver"] == max(backing, key=backing.get)
    assert rows[1]["emotion_driver"] == "video" and rows[2]["emotion_driver"] in ("text", "audio")
    alone = predictor.predict_batch(collate(feats[1:2]))[0]
    np.testing.assert_allclose(alone["emotion_probs"], rows[1]["emotion_probs"], atol=1e-5)


def test_no_signal_no_label(predictor, media, tmp_path):
    """A clip none of whose modalities the checkpoint reads is present gets no class: null
    emotion, sentiment and probabilities, and the reason; its neighbours in the batch keep theirs."""
    from mmsa_ray.pretrained import default_checkpoint

    starter = Predictor.from_checkpoint(str(default_checkpoint()), device="cpu")  # text only
    feats = [starter.preprocess(str(media["av"])), starter.preprocess(str(media["av"]), transcript="I love it!")]
    silent, spoken = starter.predict_batch(collate(feats))
    assert silent == {"emotion": None, "emotion_probs": None, "sentiment": None, "sentiment_probs": None,
                      "modalities": [], "text_emotion": None, "audio_emotion": None, "video_emotion": None,
                      "model_id": starter.model_id, "no_label_reason": "no transcript", "emotion_uncertain": None,
                      "sentiment_uncertain": None, "emotion_driver": None}
    assert spoken["emotion_driver"] == "text"  # its only modality
    assert spoken["emotion"] in labels.EMOTIONS and spoken["no_label_reason"] is None
    nothing = predictor.dummy_features()
    nothing["mask"] = np.zeros_like(nothing["mask"])  # a full model with every input absent
    (row,) = predictor.predict_batch(collate([nothing]))
    assert row["emotion"] is None and row["no_label_reason"] == "no transcript, audio or video"


def test_predict_batch_accepts_cached_embeddings(predictor):
    dummy = collate([predictor.dummy_features(), predictor.dummy_features()])
    want = predictor.predict_batch(dummy)
    with torch.no_grad():
        cached = predictor.model.backbone_features({k: torch.from_numpy(v) for k, v in dummy.items()})
    small = {"audio": dummy["audio"], "mask": dummy["mask"], **{k: v.numpy() for k, v in cached.items()}}
    got = predictor.predict_batch(small)
    np.testing.assert_allclose(got[0]["emotion_probs"], want[0]["emotion_probs"], atol=1e-5)
    with pytest.raises(KeyError, match="mask"):
        predictor.predict_batch({"audio": dummy["audio"]})


def test_dummy_features_are_valid(predictor):
    d = predictor.dummy_features()
    assert set(d) == {"video", "audio", "input_ids", "attention_mask", "mask"}
    assert d["video"].shape == (3, 8, 64, 64) and d["video"].dtype == np.float32
    assert d["audio"].shape == (1, 64, 300) and d["audio"].dtype == np.float32 and d["audio"].any()
    assert d["input_ids"].dtype == np.int64 and d["attention_mask"].sum() > 2
    assert list(d["mask"]) == [1.0, 1.0, 1.0]
    (row,) = predictor.predict_batch(collate([d]))
    assert row["modalities"] == list(labels.MODALITIES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_matches_cpu_and_bf16_is_close(tiny_checkpoint, predictor, media):
    feats = collate([predictor.preprocess(str(media["av"]), transcript="what?"), predictor.dummy_features()])
    cpu = predictor.predict_batch(feats)
    gpu = Predictor.from_checkpoint(str(tiny_checkpoint), device="cuda")
    assert gpu.model_id == predictor.model_id
    for a, b in zip(cpu, gpu.predict_batch(feats), strict=True):
        np.testing.assert_allclose(a["emotion_probs"], b["emotion_probs"], atol=1e-4)
    bf16 = Predictor.from_checkpoint(str(tiny_checkpoint), device="cuda", dtype="bf16")
    for a, b in zip(cpu, bf16.predict_batch(feats), strict=True):
        np.testing.assert_allclose(a["emotion_probs"], b["emotion_probs"], atol=2e-2)
