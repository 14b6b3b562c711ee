"""Online inference with Ray Serve: the labeling model behind an HTTP endpoint.

One application, four deployments, each scaling on its own::

    HTTP ─► Ingress       FastAPI: upload limits (streamed), form validation, errors as JSON;
              │           GET / is an upload page (page.py) over the same API
              │ file bytes + transcript (+ optional start/end seconds, context)
              ├──────────────► Speech   no transcript: speech.SpeechRecognizer (Whisper, loaded
              │                  │      once per replica, one transcription at a time) -> utterances
              ▼                  ▼
            Preprocessor  CPU: predict.Preprocessing (PyAV decode + features) in a thread pool,
              │           for the whole clip and for each utterance's window + its transcript;
              │           with faces on, each window's faces (mmsa_ray.faces.row_faces, as label)
              │ features of one clip: dict[str, np.ndarray]
              ▼
            Model         @serve.batch dynamic batching → Predictor.predict_batch; 1 GPU/replica
              │ one row: the same fields and values as a `label` Parquet row
              ▼
            JSON          the whole clip's row, plus `utterances` (one row each) when transcribed

Decoding and feature extraction are `mmsa_ray.predict.Preprocessing` and the model
step is `Predictor.predict_batch`: the very code `label` runs, so a file POSTed here gets
the probabilities its labeling row has. Decoding lives in its own deployment so CPU
decoders scale apart from GPU model replicas, and so a decoder that dies on a hostile
file (PyAV can segfault) takes down a preprocessing replica, never the HTTP front or the
model. Nothing here reads a server-side path named by a request: uploads travel as bytes.

The app is built and started by mmsa_ray.serve.launch (build_app, app, `mmsa-ray serve`),
each deployment sized by the resource plan (mmsa_ray.serve.plan). The HTTP front, Ingress,
is mmsa_ray.serve.ingress; this module holds the three deployments behind it.

Importing this module starts nothing: no Ray, no model loading.
"""

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from mmsa_ray.serve.config import DecodeLimits
from mmsa_ray.serve.request import marked_texts

logger = logging.getLogger("ray.serve")


# ----------------------------------------------------------------------------- preprocessing


@serve.deployment(name="Preprocessor")
class Preprocessor:
    """Upload bytes -> features of one clip, via predict.Preprocessing, in a thread pool.

    PyAV decoding is blocking C code: running it on the replica's event loop would stall
    every other request on this replica, so it runs in `threads` worker threads.
    """

    def __init__(self, checkpoint: str, limits: DecodeLimits, threads: int, faces: bool = True):
        from mmsa_ray.face_models import load_face_nets
        from mmsa_ray.faces import FaceConfig
        from mmsa_ray.predict import Preprocessing

        # Only the checkpoint's preprocessing config and tokenizer: no model weights here.
        self._preprocessing = Preprocessing.from_checkpoint(checkpoint)
        # Serve's caps replace the checkpoint's: only limits change, never the sampling
        # (frames, size, sample rate), so accepted files get exactly the labeling features.
        self._preprocessing.decode_config = dataclasses.replace(self._preprocessing.decode_config,
                                                                **dataclasses.asdict(limits))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self._face_nets = load_face_nets() if faces else None  # 2 MB, CPU: the decoders' own work
        self._face_config = FaceConfig()

    async def preprocess(self, data: bytes, transcript: str | None, start: float | None, end: float | None,
                         context: list[str] | None = None, future: list[str] | None = None) -> dict[str, Any]:
        """-> {"features": dict[str, np.ndarray]} or {"error": cause} for unusable media.
        context / future: earlier utterances, oldest first / later ones (Preprocessing.__call__)."""
        from mmsa_ray.media import MediaError

        loop = asyncio.get_running_loop()
        try:
            features = await loop.run_in_executor(
                self._pool,
                lambda: self._preprocessing(data, transcript=transcript, start=start, end=end, context=context,
                                            future=future),
            )
        except MediaError as e:
            return {"error": e.cause}  # the cause alone: the source is only "<bytes: N B>" here
        return {"features": features}

    async def preprocess_windows(self, data: bytes, windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several windows of one upload (the bytes travel once): each window
        {transcript, start, end, context, future[, context_speakers, future_speakers, speaker]}
        -> what `preprocess` returns for it, in order. A checkpoint with
        FeatureConfig.context_speakers reads each context utterance marked by whether the
        window's speaker said it (marked_context)."""
        marks = self._preprocessing.feature_config.context_speakers
        return list(await asyncio.gather(*(
            self.preprocess(data, w["transcript"], w["start"], w["end"], marked_texts(w, "context", marks),
                            marked_texts(w, "future", marks)) for w in windows)))


    async def faces(self, data: bytes, windows: list[tuple[float | None, float | None]]) -> list[dict[str, Any]]:
        """Each (start, end) window's face columns (faces.row_faces: what `label` writes for it),
        in order; [] with faces off."""
        from mmsa_ray.faces import row_faces

        if self._face_nets is None:
            return []
        loop = asyncio.get_running_loop()
        decode = self._preprocessing.decode_config
        return list(await asyncio.gather(*(loop.run_in_executor(
            self._pool, row_faces, data, start, end, self._face_nets, self._face_config, decode)
            for start, end in windows)))


# ----------------------------------------------------------------------------- speech


@serve.deployment(name="Speech")
class Speech:
    """Upload bytes -> utterances (speech.SpeechRecognizer). The Whisper model is loaded
    once per replica; transcriptions run one at a time in a worker thread (CTranslate2
    already uses the replica's CPUs for one), so the event loop stays free."""

    def __init__(self, config: dict[str, Any], max_duration_s: float, speakers: bool = True):
        from mmsa_ray.speech import SpeechConfig, SpeechRecognizer

        self._recognizer = SpeechRecognizer(SpeechConfig(**config))
        self._speakers = speakers
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")
        self._max_duration_s = max_duration_s

    async def transcribe(self, data: bytes, file_id: str, start: float | None, end: float | None,
                         num_speakers: int | None = None) -> dict[str, Any]:
        """-> {"utterances": utterances.utterance_rows(file_id, ...)} or {"error": cause}; with
        speakers on, utterances split at every change of speaker (num_speakers: when known)."""
        from mmsa_ray.media import MediaError
        from mmsa_ray.speakers import SpeakerConfig, VoiceTrack
        from mmsa_ray.speech import TranscriptionTimeout
        from mmsa_ray.utterances import utterance_rows

        # A running transcription cannot be stopped (a request that times out leaves it
        # going): never more than max_duration_s of audio, the longest clip served anyway.
        cap = (start or 0.0) + self._max_duration_s
        end = cap if end is None else min(end, cap)
        loop = asyncio.get_running_loop()
        try:
            voices = VoiceTrack(SpeakerConfig(num_speakers=num_speakers)) if self._speakers else None
            utterances = await loop.run_in_executor(self._pool, self._recognizer.transcribe, data, start, end, voices)
        except MediaError as e:
            return {"error": e.cause}
        except TranscriptionTimeout as e:
            return {"error": str(e)}
        return {"utterances": utterance_rows(file_id, utterances)}


# ----------------------------------------------------------------------------- model


@serve.deployment(name="Model")
class Model:
    """Features of one clip -> one labeling row, with dynamic batching across requests.

    The forward pass runs in one dedicated thread (batches run one after another, as on a
    GPU) so the event loop keeps accepting requests and filling the next batch.
    """

    def __init__(self, checkpoint: str, device: str, threads: int, max_batch_size: int, batch_wait_timeout_s: float):
        import torch

        from mmsa_ray.predict import Predictor

        if threads > 0:
            # A replica inherits OMP_NUM_THREADS=<its num_cpus> from Ray; set it on purpose.
            torch.set_num_threads(threads)
        self._predictor = Predictor.from_checkpoint(checkpoint, device=device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._batching = max_batch_size > 1
        self._predict_batched.set_max_batch_size(max_batch_size)
        self._predict_batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._failures = 0  # consecutive batches that raised; check_health reports them
        self._batches = 0  # model steps run, and the clips they held (info(): batching at work)
        self._clips = 0
        self._largest_batch = 0
        self._probe = _health_probe(self._predictor)
        self._probe()  # fail the constructor (Serve retries) rather than serve a broken model

    async def predict(self, features: dict[str, np.ndarray]) -> dict[str, Any]:
        """Features of one clip (Predictor.preprocess output) -> its row."""
        if self._batching:
            return await self._predict_batched(features)
        rows = await self._run([features])
        return rows[0]

    async def predict_many(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """Features of several clips (one request's utterances; at most max_batch_size) ->
        their rows, as one batch."""
        return await self._run(items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # real values set in __init__
    async def _predict_batched(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        return await self._run(items)

    async def _run(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        from mmsa_ray.features import collate

        batch = collate(items)
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._pool, self._predictor.predict_batch, batch)
        except Exception:
            self._failures += 1
            raise
        self._failures = 0
        self._batches += 1
        self._clips += len(items)
        self._largest_batch = max(self._largest_batch, len(items))
        return [_jsonable(row) for row in rows]

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self._predictor.model_id,
            "device": str(self._predictor.device),
            "max_batch_size": self._predict_batched._get_max_batch_size(),
            "batching": self._batching,
            "batches": self._batches,
            "clips": self._clips,
            "largest_batch": self._largest_batch,
        }

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising marks the replica
        unhealthy and Serve replaces it."""
        if self._failures >= 3:
            raise RuntimeError(f"model failed {self._failures} batches in a row")
        self._probe()


def _health_probe(predictor: Any):
    """A cheap check that the model still computes: the fusion and heads on cached
    encoder outputs (the frozen backbones are skipped), outputs finite and well shaped.

    Returns a callable that raises RuntimeError when the model is unusable.
    """
    import torch

    from mmsa_ray.features import collate

    model = predictor.model
    device = next(model.parameters()).device
    dummy = collate([predictor.dummy_features()])
    with torch.no_grad():
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in dummy.items()}
        batch.update(model.backbone_features(batch))  # run the backbones once, at start-up
        batch = {k: v for k, v in batch.items() if k not in ("video",)}

    def probe() -> None:
        with torch.no_grad():
            out = model(batch)
        for key, n in (("emotion", 7), ("sentiment", 3)):
            t = out[key]
            if tuple(t.shape) != (1, n) or not bool(torch.isfinite(t).all()):
                raise RuntimeError(f"model health probe: {key} logits shape {tuple(t.shape)}, "
                                   f"finite={bool(torch.isfinite(t).all())}")

    return probe


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/lists (exact: float32 -> float is lossless)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
