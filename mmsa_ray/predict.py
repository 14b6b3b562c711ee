"""The one inference path: a checkpoint -> preprocessing + model -> prediction rows.

`label` (Ray Data) and `serve` (Ray Serve) both run exactly this code:

    source ─► Preprocessing (decode_clip + clip_features, CPU) ─► features dict
    features dicts ─► collate ─► Predictor.predict_batch (model, any device) ─► rows

A row (one per clip):
    emotion: str, emotion_probs: list[float] (7, labels.EMOTIONS order),
    sentiment: str, sentiment_probs: list[float] (3, labels.SENTIMENTS order),
    modalities: list[str] (present ones, labels.MODALITIES order),
    text_emotion / audio_emotion / video_emotion: str | None (that modality's own top
    emotion; None when it is absent),
    emotion_driver: str | None (the present modality whose own head gives the label's emotion
    the highest probability: the one that carries the label; None without a label),
    model_id: str,
    no_label_reason: str | None,
    emotion_uncertain / sentiment_uncertain: bool | None (calibrated top probability below the
    checkpoint's threshold; None for an uncalibrated checkpoint or a row without a label).

Probabilities are the checkpoint's calibrated ones when it has a calibration
(mmsa_ray.calibrate.calibrated_probs: softmax of logits / T, then the top class's probability
recalibrated, per head), else the raw softmax.

No signal, no label: a clip none of whose modalities the checkpoint reads is present (a
text-only model and no transcript, say) gets emotion, sentiment and their probabilities
None and `no_label_reason` naming what was missing ("no transcript", "no transcript, audio
or video"); with all inputs masked the heads would only repeat their bias.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from mmsa_ray import checkpoint, labels
from mmsa_ray.calibrate import calibrated_probs
from mmsa_ray.features import FeatureConfig, clip_features, log_mel, tokenize, video_features

if TYPE_CHECKING:
    import torch

    from mmsa_ray.media.types import DecodeConfig
    from mmsa_ray.model import MultimodalSentimentModel

# What each modality's input is called in a no_label_reason.
INPUT_NAMES = {"text": "transcript", "audio": "audio", "video": "video"}
# Keys predict_batch passes to the model (anything else in a batch, e.g. ids, is ignored).
MODEL_INPUT_KEYS = ("video", "audio", "input_ids", "attention_mask", "mask", "video_emb", "text_emb")


class Preprocessing:
    """CPU side of inference: decode + features of one clip. Holds configs and the
    tokenizer, no model weights, so it is cheap to build in every decode worker."""

    def __init__(self, decode_config: DecodeConfig, feature_config: FeatureConfig, tokenizer: Any,
                 modalities: tuple[str, ...] = labels.MODALITIES):
        self.decode_config = decode_config
        self.feature_config = feature_config
        self.tokenizer = tokenizer
        self.modalities = tuple(modalities)  # the checkpoint's: without audio and video nothing is decoded

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike) -> Preprocessing:
        """The checkpoint's decode/feature config and tokenizer (no weights are read)."""
        from transformers import AutoTokenizer

        from mmsa_ray.checkpoint import TEXT_ENCODER_DIR, read_checkpoint_config
        from mmsa_ray.model import ModelConfig

        config = ModelConfig.from_dict(read_checkpoint_config(directory)["model"])
        text_dir = Path(directory) / TEXT_ENCODER_DIR
        if not text_dir.is_dir():
            raise FileNotFoundError(f"checkpoint {directory}: {TEXT_ENCODER_DIR}/ (the tokenizer) is missing")
        return cls(config.decode, config.features, AutoTokenizer.from_pretrained(str(text_dir)), config.modalities)

    @property
    def decodes_media(self) -> bool:
        """False for a checkpoint that uses neither audio nor video: its inputs are text alone."""
        return bool({"audio", "video"} & set(self.modalities))

    def __call__(
        self,
        source: str | os.PathLike | bytes | BinaryIO,
        transcript: str | None = None,
        start: float | None = None,
        end: float | None = None,
        context: list[str] | None = None,
        future: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One clip (path, bytes or file object; optional [start, end) window, seconds)
        -> its features dict (see mmsa_ray.features). Unusable media raises MediaError.

        context: the earlier utterances of the same file or dialogue, oldest first (the
        checkpoint's feature config says how many it encodes; 0: ignored); future: the later
        ones, in time order (likewise, FeatureConfig.future_turns). A checkpoint
        without audio and video never opens the source."""
        from mmsa_ray.media import decode_clip

        clip = decode_clip(source, start=start, end=end, config=self.decode_config) if self.decodes_media else None
        features = clip_features(clip, transcript, self.tokenizer, self.feature_config, decode=self.decode_config,
                                 context=context, future=future)
        used = np.array([m in self.modalities for m in labels.MODALITIES], dtype=np.float32)
        return features | {"mask": features["mask"] * used}

    def dummy_features(self) -> dict[str, np.ndarray]:
        """A valid feature dict with every modality the checkpoint uses present (mid-gray
        video, a quiet tone, a short sentence), for health probes and warm-up."""
        d, f = self.decode_config, self.feature_config
        t = np.arange(f.sample_rate, dtype=np.float32) / f.sample_rate  # 1 s
        audio = (0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        frames = np.full((1, d.num_frames, 3, d.height, d.width), 128, dtype=np.uint8)
        tokens = tokenize(["This is a health check."], self.tokenizer, f.max_text_length)
        return {
            # the same shapes `__call__` gives this checkpoint, so probes batch with requests
            "video": video_features(frames)[0] if self.decodes_media else np.zeros((3, 1, 1, 1), np.float32),
            "audio": log_mel([audio], f)[0],
            "input_ids": tokens["input_ids"][0],
            "attention_mask": tokens["attention_mask"][0],
            "mask": np.array([m in self.modalities for m in labels.MODALITIES], dtype=np.float32),
        }


class Predictor:
    """A loaded checkpoint: `preprocess` one clip on CPU, `predict_batch` a collated batch.

    `decode_config` is its Preprocessing's, and settable (to tighten limits in-process).
    """

    def __init__(
        self,
        model: MultimodalSentimentModel,
        preprocessing: Preprocessing,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype | None = None,
        calibration: dict[str, Any] | None = None,
    ):
        self.model = model
        self.preprocessing = preprocessing
        self.model_id = model_id
        self.device = device
        self.dtype = dtype  # None: fp32; torch.bfloat16: autocast on CUDA only
        self.calibration = calibration  # config.json's "calibration" (mmsa_ray.calibrate), None: uncalibrated

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    @classmethod
    def from_checkpoint(
        cls, directory: str | os.PathLike, device: str | None = None, dtype: str | None = None
    ) -> Predictor:
        """Load a checkpoint for inference. device None -> "cuda" when available, else
        "cpu". dtype None/"fp32" runs in float32; "bf16" autocasts to bfloat16 on CUDA
        (ignored on CPU)."""
        import torch

        from mmsa_ray.checkpoint import model_id

        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype in (None, "fp32", "float32"):
            amp = None
        elif dtype in ("bf16", "bfloat16"):
            amp = torch.bfloat16
        else:
            raise ValueError(f"dtype must be None, 'fp32' or 'bf16', got {dtype!r}")
        directory = Path(directory)
        model = checkpoint.load(directory, map_location=dev).eval()
        config = model.config
        preprocessing = Preprocessing(config.decode, config.features, model.tokenizer, config.modalities)
        return cls(model, preprocessing, model_id(directory), dev, amp, checkpoint.read_calibration(directory))

    @property
    def decode_config(self) -> DecodeConfig:
        return self.preprocessing.decode_config

    @decode_config.setter
    def decode_config(self, value: DecodeConfig) -> None:
        self.preprocessing.decode_config = value

    @property
    def feature_config(self) -> FeatureConfig:
        return self.preprocessing.feature_config

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the checkpoint uses (others are neither decoded nor encoded)."""
        return self.preprocessing.modalities

    @property
    def uses_context(self) -> bool:
        """True when the checkpoint reads earlier (or later) utterances with each transcript."""
        f = self.feature_config
        return "text" in self.modalities and (f.context_turns > 0 or f.future_turns > 0)

    def preprocess(
        self,
        source: str | os.PathLike | bytes | BinaryIO,
        transcript: str | None = None,
        start: float | None = None,
        end: float | None = None,
        context: list[str] | None = None,
        future: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Decode + features of one clip (CPU); raises MediaError for unusable media.
        context / future: earlier utterances, oldest first / later ones (see Preprocessing.__call__)."""
        return self.preprocessing(source, transcript=transcript, start=start, end=end, context=context, future=future)

    def dummy_features(self) -> dict[str, np.ndarray]:
        """A valid all-modalities-present feature dict (Serve's health probe)."""
        return self.preprocessing.dummy_features()

    def predict_batch(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Collated features (numpy, batch axis 0) -> one row per clip (module docstring).

        Extra keys (ids, uris, ...) are ignored. Probabilities are calibrated (float64),
        as Python floats."""
        import torch

        inputs = {}
        for k in MODEL_INPUT_KEYS:
            if k in batch:
                inputs[k] = torch.as_tensor(np.ascontiguousarray(batch[k])).to(self.device, non_blocking=True)
        if "mask" not in inputs:
            raise KeyError("predict_batch: the batch has no 'mask' [B, 3] (features from clip_features have one)")
        use_amp = self.dtype is not None and self.device.type == "cuda"
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16, enabled=use_amp),
        ):
            out = self.model(inputs)
        emotion, sentiment = (calibrated_probs(out[head].float().cpu().numpy(),
                                               self.calibration[head] if self.calibration else None)
                              for head in ("emotion", "sentiment"))
        own = {m: torch.softmax(out["per_modality"][m]["emotion"].float(), dim=-1).cpu().numpy()
               for m in labels.MODALITIES}  # each modality's own emotion head
        present = inputs["mask"].float().cpu().numpy() > 0.5
        rows = []
        for i in range(emotion.shape[0]):
            signal = bool(present[i].any())
            row: dict[str, Any] = {
                "emotion": labels.EMOTIONS[int(emotion[i].argmax())] if signal else None,
                "emotion_probs": [float(p) for p in emotion[i]] if signal else None,
                "sentiment": labels.SENTIMENTS[int(sentiment[i].argmax())] if signal else None,
                "sentiment_probs": [float(p) for p in sentiment[i]] if signal else None,
                "modalities": [m for j, m in enumerate(labels.MODALITIES) if present[i, j]],
            }
            for j, m in enumerate(labels.MODALITIES):
                row[f"{m}_emotion"] = labels.EMOTIONS[int(own[m][i].argmax())] if present[i, j] else None
            top = int(emotion[i].argmax())
            row["emotion_driver"] = max(row["modalities"], key=lambda m: own[m][i, top]) if signal else None
            row["model_id"] = self.model_id
            row["no_label_reason"] = None if signal else self.no_signal_reason()
            for head, probs in (("emotion", emotion[i]), ("sentiment", sentiment[i])):
                row[f"{head}_uncertain"] = self._uncertain(head, probs) if signal else None
            rows.append(row)
        return rows

    def _uncertain(self, head: str, probs: np.ndarray) -> bool | None:
        """Calibrated top probability below the head's threshold; None when uncalibrated."""
        if not self.calibration:
            return None
        return bool(float(probs.max()) < float(self.calibration[head]["threshold"]))

    def no_signal_reason(self) -> str:
        """What a clip lacked when none of the checkpoint's modalities was there: "no transcript"
        for a text-only checkpoint, "no transcript, audio or video" for a full one."""
        names = [INPUT_NAMES[m] for m in labels.MODALITIES if m in self.modalities]
        return "no " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])

