"""The checkpoint directory of a MultimodalSentimentModel: save, load, check, install.

Self-contained and pickle-free:
    config.json       ModelConfig (with decode + feature config), labels, versions
    model.safetensors every weight, frozen backbones included (or, compact, only what
                      differs from the pretrained encoders: see `save`)
    text_encoder/     the text encoder's tokenizer files and HF config (no weights)

A directory appears complete or not at all: it is written beside its target and renamed
into place (`install_checkpoint`), and nothing else is ever overwritten
(`refuse_non_checkpoint`). `model_id` names a checkpoint in labels and Serve responses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmsa_ray import labels
from mmsa_ray.model import ModelConfig, MultimodalSentimentModel, build_text_encoder

CHECKPOINT_FORMAT = "mmsa_ray.checkpoint"
CHECKPOINT_VERSION = 1  # bump on an incompatible change of config.json or the weight names
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_ENCODER_DIR = "text_encoder"


def save(model: MultimodalSentimentModel, directory: str | os.PathLike, *, compact: bool = False) -> Path:
    """Write the checkpoint directory (see the module docstring) atomically: it is
    built beside `directory` and renamed into place, so a crash never leaves a
    directory that looks complete. An existing checkpoint there is replaced; any
    other non-empty directory is refused.

    compact: store only what the pretrained sources cannot rebuild, for a checkpoint
    shipped in git: text-encoder tensors equal to the base encoder's are left out
    (their digest is kept, so `load` refuses a different base), the ones that changed
    are stored as float16, and the video trunk is left out when the model does not use
    video (it never runs). `load` rebuilds the rest from the base, offline for "minilm".
    """
    from safetensors.torch import save_file, save_model

    target = Path(directory)
    refuse_non_checkpoint(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        text_dir = tmp / TEXT_ENCODER_DIR
        model.tokenizer.save_pretrained(str(text_dir))
        model.text_encoder.config.save_pretrained(str(text_dir))
        compact_meta = None
        if compact:
            tensors, compact_meta = _compact_state(model)
            save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        else:  # save_model handles shared tensors and writes contiguous copies; CPU only.
            save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": model.config.to_dict(),
            "labels": {"emotions": list(labels.EMOTIONS), "sentiments": list(labels.SENTIMENTS),
                       "modalities": list(labels.MODALITIES)},
            "text_encoder": {"source": model.config.text_encoder, "class": type(model.text_encoder).__name__,
                             "hidden_size": model.text_hidden},
            "versions": _versions(),
        } | ({"compact": compact_meta} if compact_meta else {})
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_file(tmp / WEIGHTS_FILE)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~umask)  # safetensors writes 0600
        install_checkpoint(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _compact_state(model: MultimodalSentimentModel) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors to store, config.json "compact" entry) for `save(compact=True)`."""
    base, _ = build_text_encoder(model.config.text_encoder)
    base_state = {f"text_encoder.{k}": v for k, v in base.state_dict().items()}
    tensors, same = {}, {}
    skip_video = "video" not in model.config.modalities
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if skip_video and name.startswith("video_backbone."):
            continue
        if name in base_state:
            if torch.equal(t, base_state[name]):
                same[name] = t
                continue
            t = t.half() if t.is_floating_point() else t  # a fine-tuned layer: fp16 (checked by the card's metrics)
        tensors[name] = t.clone()
    meta = {"text_encoder_base": model.config.text_encoder, "base_tensors": sorted(same),
            "base_sha256": tensor_digest(same),
            "video_backbone": "omitted (video not used; never runs)" if skip_video else "stored"}
    return tensors, meta


def load(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> MultimodalSentimentModel:
    """Rebuild a saved model (eval mode) on `map_location`, offline, without pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    config = ModelConfig.from_dict(meta["model"])
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {directory}: {WEIGHTS_FILE} is missing")
    text_dir = directory / TEXT_ENCODER_DIR
    if not (text_dir / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {directory}: {TEXT_ENCODER_DIR}/config.json is missing")
    compact = meta.get("compact")
    with torch.random.fork_rng(devices=[]):  # random init before the weights arrive: leave the caller's RNG alone
        if compact:  # the base text encoder's own weights; an unused video trunk stays a (never run) random init
            model = MultimodalSentimentModel(dataclasses.replace(config, video_weights="none"))
            model.config = config
        else:
            model = MultimodalSentimentModel(config, _text_encoder_dir=text_dir)
    try:
        if compact:
            _load_compact(model, load_file(str(weights)), compact, directory)
        else:
            load_model(model, str(weights), strict=True, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {directory}: {WEIGHTS_FILE} is damaged or not a safetensors file: {e}") from e
    except RuntimeError as e:
        raise ValueError(f"checkpoint {directory}: {WEIGHTS_FILE} does not match its config.json: {e}") from e
    model.to(map_location)
    return model.eval()


def _load_compact(
    model: MultimodalSentimentModel, tensors: dict[str, Tensor], compact: dict[str, Any], directory: Path
) -> None:
    """Load a compact checkpoint's tensors over a model built from the base encoders."""
    own = model.state_dict()
    base_names = list(compact.get("base_tensors", []))
    where = f"checkpoint {directory}: {WEIGHTS_FILE}"
    missing_base = [n for n in base_names if n not in own]
    if missing_base or tensor_digest({n: own[n] for n in base_names}) != compact.get("base_sha256"):
        raise ValueError(f"{where} was made over another text encoder than {compact.get('text_encoder_base')!r} "
                         "installed here (its base weights differ); reinstall the package version it names")
    unexpected = sorted(set(tensors) - set(own))
    omitted_ok = set(base_names) | ({n for n in own if n.startswith("video_backbone.")}
                                    if "video" not in model.config.modalities else set())
    missing = sorted(set(own) - set(tensors) - omitted_ok)
    if unexpected or missing:
        raise RuntimeError(f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in tensors.items():
            if own[name].shape != t.shape:
                raise RuntimeError(f"{name}: shape {tuple(t.shape)} in the file, {tuple(own[name].shape)} in the model")
            own[name].copy_(t.to(own[name].dtype))


def read_checkpoint_config(directory: str | os.PathLike) -> dict[str, Any]:
    """config.json of a checkpoint directory, checked: format, version, label sets."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint {directory}: no such directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {directory}: {CONFIG_FILE} is missing (not a checkpoint, or an unfinished save)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {directory}: {CONFIG_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {directory}: {CONFIG_FILE} is not an mmsa_ray checkpoint config "
            f"(format != {CHECKPOINT_FORMAT!r})"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {directory}: format_version {version!r} is newer than this mmsa_ray supports "
            f"({CHECKPOINT_VERSION}); upgrade mmsa_ray to load it"
        )
    expected = {"emotions": list(labels.EMOTIONS), "sentiments": list(labels.SENTIMENTS),
                "modalities": list(labels.MODALITIES)}
    got = meta.get("labels")
    if got != expected:
        raise ValueError(
            f"checkpoint {directory}: label sets {got} differ from this code's {expected}; outputs would be mislabeled"
        )
    if not isinstance(meta.get("model"), dict):
        raise ValueError(f"checkpoint {directory}: {CONFIG_FILE} has no 'model' config")
    return meta


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over named tensors (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update((t.float() if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return h.hexdigest()


def weights_digest(directory: str | os.PathLike) -> str:
    """sha256 hex digest of a checkpoint's model.safetensors."""
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id(directory: str | os.PathLike) -> str:
    """`<checkpoint folder name>-<first 12 hex of weights_digest>`: the `model_id` column of
    labels and Serve responses."""
    return f"{Path(directory).resolve().name}-{weights_digest(directory)[:12]}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _versions() -> dict[str, str]:
    import transformers

    import mmsa_ray

    return {"mmsa_ray": mmsa_ray.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def refuse_non_checkpoint(target: Path) -> None:
    """FileExistsError unless `target` is absent, an empty directory or an mmsa_ray
    checkpoint: writing a checkpoint must never replace someone's other files."""
    if target.exists() and not (target / CONFIG_FILE).is_file() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not an mmsa_ray checkpoint; refusing to overwrite it")


def install_checkpoint(tmp: Path, target: Path) -> None:
    """Move the complete checkpoint directory `tmp` (beside `target`) to `target`, replacing
    an older checkpoint there by renames, so a reader never sees a partial directory."""
    refuse_non_checkpoint(target)
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def read_calibration(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint's calibration (mmsa_ray.calibrate), or None for an uncalibrated one."""
    from mmsa_ray.calibrate import CALIBRATION_KEY

    return read_checkpoint_config(directory).get(CALIBRATION_KEY)


def write_calibration(directory: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Store `record` as the checkpoint's calibration in its config.json (replaced atomically);
    the weights, and so the model_id, stay as they are."""
    from mmsa_ray.calibrate import CALIBRATION_KEY

    directory = Path(directory)
    meta = read_checkpoint_config(directory)
    meta[CALIBRATION_KEY] = record
    tmp = directory / f".{CONFIG_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CONFIG_FILE)
    return directory / CONFIG_FILE
