"""ServeConfig: every setting of the Serve application (limits, replicas, batching,
speech), with its checks, its `serve run key=value` parsing and its argparse flags.

`mmsa-ray serve`, `serve run mmsa_ray.serve:app checkpoint=DIR` and jobs/serve.yaml all
build one of these; mmsa_ray.serve wires the deployments from it. Importing this module
starts nothing.
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


@dataclass
class ServeConfig:
    """Everything `mmsa-ray serve`, `serve run mmsa_ray.serve:app` and jobs/serve.yaml set.

    Field defaults suit one laptop-sized machine; a GPU cluster raises replicas and
    num_gpus. Units are in the names (`_s` seconds, `_mb` MiB).
    """

    checkpoint: str = field(default="", metadata={"help": "checkpoint directory (config.json + model.safetensors); default: the "
                                                  "starter checkpoint shipped in the package (MELD text, mmsa_ray/pretrained/meld-text)"})
    host: str = field(default="127.0.0.1", metadata={"help": "HTTP bind address; 0.0.0.0 exposes it beyond this machine"})
    port: int = field(default=8000, metadata={"help": "HTTP port"})
    app_name: str = field(default="mmsa", metadata={"help": "Serve application name"})
    route_prefix: str = field(default="/", metadata={"help": "HTTP route prefix of the application"})
    # Limits: beyond them a request gets a 4xx with the reason, never a 500.
    max_upload_mb: float = field(default=64.0, metadata={"help": "largest accepted request body, MiB (413 beyond, enforced while streaming)"})
    max_duration_s: float = field(default=600.0, metadata={"help": "longest accepted media (or start..end window), seconds"})
    max_pixels: int = field(default=3840 * 2160, metadata={"help": "largest accepted frame, width*height pixels"})
    decode_timeout_s: float = field(default=30.0, metadata={"help": "wall-clock limit to decode one upload, seconds"})
    request_timeout_s: float = field(default=60.0, metadata={"help": "end-to-end limit per request, seconds (504 beyond)"})
    max_transcript_chars: int = field(default=5000, metadata={"help": "longest accepted transcript, characters"})
    # Model deployment.
    num_gpus: float | None = field(default=None, metadata={"help": "GPUs per model replica; default: 1 if CUDA is visible where the app is built, else 0"})
    model_num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per model replica"})
    model_threads: int = field(default=0, metadata={"help": "torch threads per model replica; 0 = its reserved CPUs (at least 1)"})
    min_replicas: int = field(default=1, metadata={"help": "autoscaling: fewest model replicas"})
    max_replicas: int = field(default=1, metadata={"help": "autoscaling: most model replicas"})
    target_ongoing_requests: float | None = field(default=None, metadata={"help": "autoscaling: requests per model replica to aim for; default max_batch_size"})
    max_batch_size: int = field(default=8, metadata={"help": "dynamic batching: largest batch; 1 turns batching off"})
    batch_wait_timeout_s: float = field(default=0.01, metadata={"help": "dynamic batching: longest wait for a batch to fill, seconds"})
    max_ongoing_requests: int | None = field(default=None, metadata={"help": "requests in flight per model replica; default 2 * max_batch_size"})
    max_queued_requests: int = field(default=64, metadata={"help": "requests waiting per caller for the model and the preprocessor (503 beyond)"})
    # Preprocessing deployment (decode + features, CPU only).
    preprocess_replicas: int = field(default=1, metadata={"help": "autoscaling: most preprocessing replicas (at least 1 runs)"})
    preprocess_num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per preprocessing replica"})
    preprocess_threads: int = field(default=2, metadata={"help": "concurrent decodes per preprocessing replica"})
    # Ingress deployment (HTTP only; holds no model).
    ingress_replicas: int = field(default=1, metadata={"help": "HTTP ingress replicas"})
    ingress_max_ongoing_requests: int = field(default=64, metadata={"help": "requests in flight per ingress replica"})
    ingress_max_queued_requests: int = field(default=128, metadata={"help": "requests waiting at the HTTP proxy (503 beyond)"})
    # Speech deployment (uploads without a transcript are transcribed; see mmsa_ray.speech).
    asr_model: str = field(default="default", metadata={"help": "Whisper model: 'default' (offline tiny.en), a faster-whisper name (small.en, large-v3, distil-large-v3) or a CTranslate2 directory"})
    asr_device: str = field(default="cpu", metadata={"help": "where Whisper runs: cpu, cuda or auto"})
    asr_compute_type: str | None = field(default=None, metadata={"help": "CTranslate2 compute type; default int8 on CPU, float16 on GPU"})
    speech_replicas: int = field(default=1, metadata={"help": "autoscaling: most speech replicas (each loads Whisper once and transcribes one upload at a time)"})
    speech_num_cpus: float = field(default=1.0, metadata={"help": "CPUs reserved per speech replica (also Whisper's threads)"})
    speech_num_gpus: float = field(default=0.0, metadata={"help": "GPUs per speech replica (with asr_device cuda)"})

    def __post_init__(self) -> None:
        if not str(self.checkpoint).strip():
            from mmsa_ray.pretrained import default_checkpoint

            self.checkpoint = str(default_checkpoint())
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "max_pixels": self.max_pixels,
            "decode_timeout_s": self.decode_timeout_s,
            "request_timeout_s": self.request_timeout_s,
            "max_transcript_chars": self.max_transcript_chars,
            "model_num_cpus": self.model_num_cpus + 1e-9,  # 0 CPUs is allowed (GPU-only replica)
            "max_replicas": self.max_replicas,
            "max_batch_size": self.max_batch_size,
            "max_queued_requests": self.max_queued_requests,
            "preprocess_replicas": self.preprocess_replicas,
            "preprocess_threads": self.preprocess_threads,
            "ingress_replicas": self.ingress_replicas,
            "ingress_max_ongoing_requests": self.ingress_max_ongoing_requests,
            "ingress_max_queued_requests": self.ingress_max_queued_requests,
            "speech_replicas": self.speech_replicas,
            "speech_num_cpus": self.speech_num_cpus + 1e-9,  # 0 is allowed (a GPU speech replica)
        }
        bad = [f"{k}={v!r} must be > 0" for k, v in positive.items() if not (isinstance(v, (int, float)) and v > 0)]
        if self.batch_wait_timeout_s < 0:
            bad.append(f"batch_wait_timeout_s={self.batch_wait_timeout_s!r} must be >= 0")
        if self.model_threads < 0 or self.min_replicas < 0 or self.preprocess_num_cpus < 0:
            bad.append("model_threads, min_replicas and preprocess_num_cpus must be >= 0")
        if self.speech_num_gpus < 0:
            bad.append(f"speech_num_gpus={self.speech_num_gpus!r} must be >= 0")
        if self.asr_device not in ("cpu", "cuda", "auto"):
            bad.append(f"asr_device={self.asr_device!r} must be cpu, cuda or auto")
        if self.num_gpus is not None and self.num_gpus < 0:
            bad.append(f"num_gpus={self.num_gpus!r} must be >= 0")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            bad.append(f"max_ongoing_requests={self.max_ongoing_requests} < max_batch_size={self.max_batch_size} (batches could never fill)")
        if self.min_replicas > self.max_replicas:
            bad.append(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if not str(self.route_prefix).startswith("/"):
            bad.append(f"route_prefix={self.route_prefix!r} must start with '/'")
        if bad:
            raise ValueError("invalid ServeConfig: " + "; ".join(bad))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MiB)

    def resolved_num_gpus(self) -> float:
        """GPUs per model replica. Decided where the app is built: on a cluster whose head
        has no GPU, set num_gpus explicitly (jobs/serve.yaml does)."""
        if self.num_gpus is not None:
            return float(self.num_gpus)
        import torch  # only here: keeps `import mmsa_ray.serve` light

        return 1.0 if torch.cuda.is_available() else 0.0

    def speech_config(self) -> dict[str, Any]:
        """The SpeechConfig fields of the speech deployment (a dict: Serve pickles it)."""
        return {"model": self.asr_model, "device": self.asr_device, "compute_type": self.asr_compute_type,
                "cpu_threads": max(1, int(self.speech_num_cpus))}

    def resolved_max_ongoing_requests(self) -> int:
        # Twice a batch: one batch runs while the next one fills.
        return self.max_ongoing_requests or 2 * self.max_batch_size

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "ServeConfig":
        """Build from `serve run ... key=value` strings or YAML `args` (typed values).

        Unknown keys raise (Ray would otherwise ignore a typo); strings are converted to
        each field's type ("none"/"null" give None for optional fields).
        """
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args) - set(names))
        if unknown:
            raise ValueError(f"unknown serve option(s) {unknown}; valid: {names}")
        return cls(**{k: _coerce(k, hints[k], v) for k, v in args.items()})


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert one option value to the field's declared type (str, int, float, optional)."""
    options = typing.get_args(hint)
    optional = type(None) in options
    base = next((t for t in options if t is not type(None)), hint) if options else hint
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise ValueError(f"serve option {name!r} needs a {base.__name__}, got {value!r}")
    try:
        if base is bool or isinstance(value, bool):
            raise TypeError
        if base is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"serve option {name!r} needs a {base.__name__}, got {value!r}") from None


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ServeConfig field (`--max-upload-mb`, ...), help from the field."""
    hints = typing.get_type_hints(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        options = typing.get_args(hints[f.name])
        base = next((t for t in options if t is not type(None)), hints[f.name]) if options else hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, type=base, required=True, help=f.metadata["help"])
        else:
            # Optional fields describe their automatic default in their help.
            suffix = "" if f.default in (None, "") else f" (default: {f.default})"
            parser.add_argument(flag, type=base, default=f.default, help=f.metadata["help"] + suffix)


def serve_config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig for parsed `add_serve_args` flags."""
    return ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
