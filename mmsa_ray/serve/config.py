"""ServeConfig: every setting of the Serve application (limits, replicas, batching,
speech), with its checks, its `serve run key=value` parsing and its argparse flags.

`mmsa-ray serve`, `serve run mmsa_ray.serve:app checkpoint=DIR` and jobs/serve.yaml all
build one of these; mmsa_ray.serve wires the deployments from it. The limits a deployment
enforces travel to it as DecodeLimits (Preprocessor) and IngressLimits (Ingress), frozen
views of a ServeConfig. Importing this module starts nothing.
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024


def _setting(default: Any, help_text: str) -> Any:
    """A ServeConfig field: its default and the help of its `--flag` (add_serve_args)."""
    return field(default=default, metadata={"help": help_text})


PROXY_LOCATIONS = ("EveryNode", "HeadOnly")  # Serve's ProxyLocation values that serve HTTP

@dataclass
class ServeConfig:
    """Everything `mmsa-ray serve`, `serve run mmsa_ray.serve:app` and jobs/serve.yaml set.

    Field defaults suit one laptop-sized machine; a GPU cluster raises replicas and
    num_gpus. Units are in the names (`_s` seconds, `_mb` MiB).
    """

    checkpoint: str = _setting("", "checkpoint directory (config.json + model.safetensors); default: the starter "
                                   "checkpoint shipped in the package (MELD text, mmsa_ray/pretrained/meld-text)")
    host: str = _setting("127.0.0.1", "HTTP bind address; 0.0.0.0 exposes it beyond this machine")
    port: int = _setting(8000, "HTTP port")
    proxy_location: str = _setting(
        "EveryNode", "where Serve answers HTTP: EveryNode (every node on host:port, behind a load balancer) or "
        "HeadOnly (the head alone; several nodes on one machine must share one port)")
    app_name: str = _setting("mmsa", "Serve application name")
    route_prefix: str = _setting("/", "HTTP route prefix of the application")
    # Limits: beyond them a request gets a 4xx with the reason, never a 500.
    max_upload_mb: float = _setting(64.0, "largest accepted request body, MiB (413 beyond, enforced while streaming)")
    max_duration_s: float = _setting(600.0, "longest accepted media (or start..end window), seconds")
    max_pixels: int = _setting(3840 * 2160, "largest accepted frame, width*height pixels")
    decode_timeout_s: float = _setting(30.0, "wall-clock limit to decode one upload, seconds")
    request_timeout_s: float = _setting(60.0, "end-to-end limit per request, seconds (504 beyond)")
    max_transcript_chars: int = _setting(5000, "longest accepted transcript, characters")
    # Model deployment.
    num_gpus: float | None = _setting(
        None, "GPUs per model replica; default: 1 if CUDA is visible where the app is built, else 0")
    model_num_cpus: float | None = _setting(
        None, "CPUs reserved per model replica; default: auto, a share of the cluster's CPUs (at most 1)")
    model_threads: int = _setting(0, "torch threads per model replica; 0 = its reserved CPUs (at least 1)")
    min_replicas: int = _setting(1, "autoscaling: fewest model replicas")
    max_replicas: int | None = _setting(
        None, "autoscaling: most model replicas; default: auto, one per GPU (one per 8 CPUs without GPUs)")
    target_ongoing_requests: float | None = _setting(
        None, "autoscaling: requests per model replica to aim for; default max_batch_size")
    max_batch_size: int = _setting(8, "dynamic batching: largest batch; 1 turns batching off")
    batch_wait_timeout_s: float = _setting(0.01, "dynamic batching: longest wait for a batch to fill, seconds")
    max_ongoing_requests: int | None = _setting(
        None, "requests in flight per model replica; default 2 * max_batch_size")
    max_queued_requests: int = _setting(
        64, "requests waiting per caller for the model and the preprocessor (503 beyond)")
    max_inflight_requests: int | None = _setting(
        None, "uploads one ingress replica works on at once; beyond, 503 with Retry-After at once; "
        "default: auto, 4 per CPU of the cluster (at least 4)")
    # Preprocessing deployment (decode + features, CPU only).
    preprocess_replicas: int | None = _setting(
        None, "autoscaling: most preprocessing replicas (at least 1 runs); default: auto, one per 4 CPUs")
    preprocess_num_cpus: float | None = _setting(
        None, "CPUs reserved per preprocessing replica; default: auto, a share of the cluster's CPUs (at most 1)")
    preprocess_threads: int = _setting(2, "concurrent decodes per preprocessing replica")
    # Ingress deployment (HTTP only; holds no model).
    ingress_replicas: int = _setting(1, "HTTP ingress replicas")
    ingress_max_ongoing_requests: int = _setting(
        256, "requests Serve hands one ingress replica at once (it answers those past max_inflight_requests "
        "with 503 itself)")
    ingress_max_queued_requests: int = _setting(128, "requests waiting at the HTTP proxy (503 beyond)")
    # Speech deployment (uploads without a transcript are transcribed; see mmsa_ray.speech).
    asr_model: str = _setting(
        "default",
        "Whisper model: 'default' (offline tiny.en), a faster-whisper name (small.en, large-v3, "
        "distil-large-v3) or a CTranslate2 directory")
    asr_device: str = _setting("cpu", "where Whisper runs: cpu, cuda or auto")
    asr_compute_type: str | None = _setting(None, "CTranslate2 compute type; default int8 on CPU, float16 on GPU")
    speech_replicas: int | None = _setting(
        None, "autoscaling: most speech replicas (each loads Whisper once and transcribes one upload at a time); "
        "default: auto, one per 4 CPUs")
    speech_num_cpus: float | None = _setting(
        None, "CPUs reserved per speech replica (also Whisper's threads, at least 1); default: auto, a share of "
        "the cluster's CPUs (at most 1)")
    speech_num_gpus: float = _setting(0.0, "GPUs per speech replica (with asr_device cuda)")
    speakers: str = _setting("on", "on or off: find who speaks when in transcribed uploads (utterances split at every "
                             "change of speaker and carry `speaker`)")
    faces: str = _setting("on", "on or off: find, track and read the faces of each upload and utterance (faces, "
                          "face_count, face_emotion; mmsa_ray.faces)")
    fuse: str = _setting("", "text=1,face=W: also answer fused_emotion, the checkpoint's calibrated emotion and "
                         "the main face's log-linear pooled (mmsa_ray.fusion; no weight is validated); default: none")

    def __post_init__(self) -> None:
        if not str(self.checkpoint).strip():
            from mmsa_ray.pretrained import default_checkpoint

            self.checkpoint = str(default_checkpoint())
        positive = {  # None: auto (serve/plan.py)
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "max_pixels": self.max_pixels,
            "decode_timeout_s": self.decode_timeout_s,
            "request_timeout_s": self.request_timeout_s,
            "max_transcript_chars": self.max_transcript_chars,
            "max_replicas": self.max_replicas,
            "max_batch_size": self.max_batch_size,
            "max_queued_requests": self.max_queued_requests,
            "max_inflight_requests": self.max_inflight_requests,
            "preprocess_replicas": self.preprocess_replicas,
            "preprocess_threads": self.preprocess_threads,
            "ingress_replicas": self.ingress_replicas,
            "ingress_max_ongoing_requests": self.ingress_max_ongoing_requests,
            "ingress_max_queued_requests": self.ingress_max_queued_requests,
            "speech_replicas": self.speech_replicas,
        }
        bad = [f"{k}={v!r} must be > 0" for k, v in positive.items()
               if v is not None and not (isinstance(v, (int, float)) and v > 0)]
        # 0 CPUs is allowed: a GPU-only model or speech replica, or a preprocessor that only waits
        cpus = {"model_num_cpus": self.model_num_cpus, "preprocess_num_cpus": self.preprocess_num_cpus,
                "speech_num_cpus": self.speech_num_cpus}
        bad += [f"{k}={v!r} must be >= 0" for k, v in cpus.items() if v is not None and v < 0]
        if self.batch_wait_timeout_s < 0:
            bad.append(f"batch_wait_timeout_s={self.batch_wait_timeout_s!r} must be >= 0")
        if self.model_threads < 0 or self.min_replicas < 0:
            bad.append("model_threads and min_replicas must be >= 0")
        if self.speech_num_gpus < 0:
            bad.append(f"speech_num_gpus={self.speech_num_gpus!r} must be >= 0")
        for name in ("speakers", "faces"):
            if getattr(self, name) not in ("on", "off"):
                bad.append(f"{name}={getattr(self, name)!r} must be on or off")
        if self.proxy_location not in PROXY_LOCATIONS:
            bad.append(f"proxy_location={self.proxy_location!r} must be one of {', '.join(PROXY_LOCATIONS)}")
        if self.asr_device not in ("cpu", "cuda", "auto"):
            bad.append(f"asr_device={self.asr_device!r} must be cpu, cuda or auto")
        if self.num_gpus is not None and self.num_gpus < 0:
            bad.append(f"num_gpus={self.num_gpus!r} must be >= 0")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.max_batch_size:
            bad.append(f"max_ongoing_requests={self.max_ongoing_requests} < max_batch_size={self.max_batch_size} "
                       "(batches could never fill)")
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            bad.append(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        if not str(self.route_prefix).startswith("/"):
            bad.append(f"route_prefix={self.route_prefix!r} must start with '/'")
        if self.fuse:
            try:
                self.fuse_weights()
            except ValueError as e:
                bad.append(str(e))
        if bad:
            raise ValueError("invalid ServeConfig: " + "; ".join(bad))

    def fuse_weights(self) -> dict[str, float] | None:
        """The fuse setting as weights (fusion.parse_fuse), None when not set."""
        from mmsa_ray.fusion import parse_fuse

        return parse_fuse(self.fuse) if self.fuse else None

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

    def speech_config(self, threads: int) -> dict[str, Any]:
        """The SpeechConfig fields of the speech deployment (a dict: Serve pickles it);
        `threads`: Whisper's CPU threads (the plan's, from the CPUs its replica reserves)."""
        return {"model": self.asr_model, "device": self.asr_device, "compute_type": self.asr_compute_type,
                "cpu_threads": threads}

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


@dataclass(frozen=True)
class DecodeLimits:
    """What the Preprocessor caps per upload: these replace the same-named fields of the
    checkpoint's media.DecodeConfig (only limits; the sampling stays the checkpoint's)."""

    max_duration_s: float  # longest media (or start..end window), seconds
    max_pixels: int  # largest frame, width*height
    timeout_s: float  # wall-clock limit to decode one upload, seconds

    @classmethod
    def from_config(cls, config: ServeConfig) -> "DecodeLimits":
        return cls(max_duration_s=config.max_duration_s, max_pixels=config.max_pixels,
                   timeout_s=config.decode_timeout_s)


@dataclass(frozen=True)
class IngressLimits:
    """What the Ingress enforces per request before any decoding, and how many utterance
    windows it sends to the model at once."""

    max_batch_size: int  # utterance windows per preprocess/model call (the model's batch)
    max_upload_bytes: int  # largest request body (413 beyond)
    max_transcript_chars: int  # longest transcript, and transcript + context (422 beyond)
    request_timeout_s: float  # end-to-end limit per request (504 beyond)
    max_inflight_requests: int  # uploads worked on at once by one ingress replica (503 beyond, at once)

    @classmethod
    def from_config(cls, config: ServeConfig, max_inflight_requests: int) -> "IngressLimits":
        return cls(max_batch_size=int(config.max_batch_size), max_upload_bytes=int(config.max_upload_bytes),
                   max_transcript_chars=int(config.max_transcript_chars),
                   request_timeout_s=float(config.request_timeout_s),
                   max_inflight_requests=int(max_inflight_requests))


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
