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
each deployment sized by the resource plan (mmsa_ray.serve.plan). The Ingress refuses an
upload at once (503, Retry-After) past max_inflight_requests, and answers 504 naming the
stage a request was still in when request_timeout_s ran out.

Importing this module starts nothing: no Ray, no model loading.
"""

# No `from __future__ import annotations`: Serve's FastAPI class-based views need the
# real annotation objects (a string `Request` would turn into a query parameter).
import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from mmsa_ray.serve.config import (
    DecodeLimits,
    IngressLimits,
)
from mmsa_ray.serve.request import (
    ERROR_RESPONSES,
    FORM_FIELDS,
    PREDICT_OPENAPI,
    RequestError,
    UploadForm,
    check_form,
    marked_texts,
    utterance_windows,
)
from mmsa_ray.utterances import no_speech_reason

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


# ----------------------------------------------------------------------------- HTTP ingress


api = FastAPI(
    title="mmsa-ray",
    version="1",
    description="Multimodal (video + audio + text) emotion and sentiment of a video clip.",
)


def _replica_states() -> dict[str, dict[str, int]]:
    """This application's deployments -> how many of their replicas are in each state
    (RUNNING, STARTING, RECOVERING, ...; Serve's status); {} when Serve does not know it."""
    app_name = serve.get_replica_context().app_name
    status = serve.status().applications.get(app_name)
    if status is None:
        return {}
    return {name: {str(getattr(k, "value", k)): int(v) for k, v in d.replica_states.items() if v}
            for name, d in sorted(status.deployments.items())}


class _UploadTooLarge(Exception):
    pass


class _Stage:
    """Where a request is (named in its 504 when it runs out of time)."""

    name = "waiting to start"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_exception(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and wrong methods answer in the same {"error": ...} shape.
    return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


# Everything the Ingress methods use must be defined above it or imported (the request's
# fields: request.py): @serve.ingress pickles the FastAPI app (with these methods,
# by value) when the class is created.
@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP front: validates and streams uploads, then calls Preprocessor and Model."""

    def __init__(self, preprocessor: Any, model: Any, speech: Any, limits: IngressLimits,
                 fuse: dict[str, float] | None = None):
        self._pre = preprocessor  # DeploymentHandle
        self._model = model  # DeploymentHandle
        self._speech = speech  # DeploymentHandle
        self._fuse = fuse  # fusion weights, None: no fused_emotion
        self._batch = limits.max_batch_size
        self._max_bytes = limits.max_upload_bytes
        self._max_transcript = limits.max_transcript_chars
        self._timeout_s = limits.request_timeout_s
        self._max_inflight = limits.max_inflight_requests
        self._inflight = 0  # uploads this replica is working on (one event loop: no lock needed)

    @api.post(
        "/v1/predict",
        summary="Emotion and sentiment of an uploaded clip",
        description="multipart/form-data with `file` and optional `transcript`, `start`, `end`, `context`, "
        "`transcribe`; returns the fields of a labeling row (emotion, emotion_probs, sentiment, sentiment_probs, ...) "
        "for the whole clip, and without a transcript (unless transcribe=false) `utterances`: one such row per "
        "spoken utterance with its start, end, transcript, words and asr_confidence.",
        openapi_extra=PREDICT_OPENAPI,
        responses=ERROR_RESPONSES,
    )
    async def predict(self, request: Request) -> JSONResponse:
        if self._inflight >= self._max_inflight:  # refused at once: a queue past this would only time out
            return _error(503, f"server busy: {self._inflight} uploads in progress (max_inflight_requests); "
                               "retry later", headers={"Retry-After": "1"})
        self._inflight += 1
        stage = _Stage()
        try:
            row = await asyncio.wait_for(self._predict(request, stage), timeout=self._timeout_s)
        except RequestError as e:
            return _error(e.status, e.message)
        except TimeoutError:
            return _error(504, f"request did not finish within request_timeout_s={self._timeout_s:g} s "
                               f"(still at: {stage.name})")
        except BackPressureError as e:
            return _error(503, f"server busy, retry later: {e.message}", headers={"Retry-After": "1"})
        except DeploymentUnavailableError as e:
            return _error(503, f"model not available: {e.message}")
        except RayActorError as e:
            # A replica died under this request, e.g. the decoder crashed on the file.
            logger.warning("replica died while serving a request: %s", e)
            return _error(503, "a worker died while processing this request (the file may crash the decoder); "
                               "retry later")
        except Exception as e:
            # A bug, not bad input (bad media is a MediaError -> 422 above): log it whole,
            # answer briefly.
            logger.exception("predict failed")
            return _error(500, f"internal error: {type(e).__name__}")
        finally:
            self._inflight -= 1
        return JSONResponse(row)

    async def _predict(self, request: Request, stage: "_Stage") -> dict[str, Any]:
        stage.name = "reading the upload"
        form = await self._read_form(request)
        try:
            data = await form.upload.read()
        finally:
            await form.upload.close()
        if not data:
            raise RequestError(400, f"uploaded file {form.upload.filename!r} is empty")
        name = form.upload.filename or "upload"
        has_transcript = form.transcript is not None and bool(form.transcript.strip())
        # speech recognition runs beside the whole clip's decode
        speech = (self._speech.transcribe.remote(data, name, form.start, form.end, form.num_speakers)
                  if form.transcribe and not has_transcript else None)
        faces = self._pre.faces.remote(data, [(form.start, form.end)])  # beside the decode, on another thread
        stage.name = "decoding the upload"
        result = await self._pre.preprocess.remote(data, form.transcript, form.start, form.end, form.context,
                                                   form.future)
        if "error" in result:
            for pending in (speech, faces):
                if pending is not None:
                    pending.cancel()
            raise RequestError(422, f"cannot use uploaded file {name!r}: {result['error']}")
        stage.name = "the model"
        row = await self._model.predict.remote(result["features"])
        stage.name = "faces"
        out = self._fused({"source": name, **row, **next(iter(await faces), {})})
        if speech is not None:
            stage.name = "speech recognition"
            transcribed = await speech
            stage.name = "labeling the utterances"
            out.update(await self._utterances(data, transcribed, form))
        return out

    async def _utterances(self, data: bytes, speech: dict[str, Any], form: UploadForm) -> dict[str, Any]:
        """Each utterance's window predicted as a clip of its own, with its transcript, the
        earlier ones as context and the later ones as its future: {"utterances": [...]} (+
        "speech_error" when the upload's audio could not be transcribed, e.g. a video
        without sound)."""
        if "error" in speech:
            return {"utterances": [], "speech_error": speech["error"]}
        utterances = speech["utterances"]
        windows = utterance_windows(utterances, form)
        out = []
        # max_batch_size windows at a time: one request never floods the model's queue,
        # and at most one batch of features is in flight
        for i in range(0, len(windows), self._batch):
            group = windows[i:i + self._batch]
            faces = self._pre.faces.remote(data, [(w["start"], w["end"]) for w in group])
            results = await self._pre.preprocess_windows.remote(data, group)
            faces = await faces or [{}] * len(group)
            ok = [r["features"] for r in results if "error" not in r]
            rows = iter(await self._model.predict_many.remote(ok) if ok else [])
            for u, r, f in zip(utterances[i:i + self._batch], results, faces, strict=True):
                fields = {**{k: v for k, v in u.items() if k != "id"}, **f}
                if "error" in r:
                    out.append({**fields, "error": r["error"]})
                    continue
                row = next(rows)
                out.append(self._fused({**fields, **row,
                                        "no_label_reason": no_speech_reason(row["no_label_reason"], u)}))
        return {"utterances": out}

    def _fused(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with fused_emotion and fused_emotion_probs when fusion is on (mmsa_ray.fusion)."""
        from mmsa_ray.fusion import fuse

        return {**row, **fuse(row, self._fuse)} if self._fuse else row

    async def _read_form(self, request: Request) -> UploadForm:
        """Parse the multipart body, counting bytes as they stream in (413 past the cap), and
        check its fields (request.check_form)."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise RequestError(415, "expected multipart/form-data with a 'file' field, got content-type "
                                    f"{content_type!r}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise RequestError(413, f"request body of {int(declared)} bytes exceeds the {self._max_bytes}-byte limit "
                                    "(max_upload_mb)")

        limit = self._max_bytes

        async def limited_stream():
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _UploadTooLarge()
                yield chunk

        try:
            form = await MultiPartParser(request.headers, limited_stream(), max_files=1,
                                         max_fields=len(FORM_FIELDS)).parse()
        except _UploadTooLarge:
            raise RequestError(413, f"request body exceeds the {limit}-byte limit (max_upload_mb)") from None
        except MultiPartException as e:
            raise RequestError(400, f"malformed multipart body: {e.message}") from None

        try:
            return check_form(form, self._max_transcript)
        except RequestError:
            await form.close()
            raise

    @api.get("/", include_in_schema=False)
    async def page(self, request: Request) -> HTMLResponse:
        """The upload page (mmsa_ray/serve/page.py): a form over POST /v1/predict that
        shows the result on the report's timeline."""
        from mmsa_ray.serve.page import page_html

        return HTMLResponse(page_html(request.scope.get("root_path", "")))

    @api.get("/healthz", summary="Readiness: every deployment has a running replica")
    async def healthz(self) -> JSONResponse:
        """200 while every deployment has a running replica (a busy model counts as up), with
        the model's info and each deployment's replicas by state: status "ok", or "degraded"
        while some replica is not running (lost with its node, restarting); 503 naming the
        deployments without one, or when the model is unavailable."""
        loop = asyncio.get_running_loop()
        try:
            replicas = await asyncio.wait_for(loop.run_in_executor(None, _replica_states), timeout=5.0)
        except TimeoutError:
            replicas = {}  # the controller is slow to answer: the model's own answer decides
        missing = [name for name, states in replicas.items() if not states.get("RUNNING")]
        if missing:
            return JSONResponse({"status": "unavailable", "error": "no running replica: " + ", ".join(missing),
                                 "replicas": replicas}, status_code=503)
        status = "degraded" if any(set(states) - {"RUNNING"} for states in replicas.values()) else "ok"
        try:
            info = await asyncio.wait_for(self._model.info.remote(), timeout=5.0)
        except (BackPressureError, TimeoutError):
            return JSONResponse({"status": status, "model": "busy", "replicas": replicas})
        except (DeploymentUnavailableError, RayActorError) as e:
            return JSONResponse({"status": "unavailable", "error": str(e), "replicas": replicas}, status_code=503)
        return JSONResponse({"status": status, "model": info, "replicas": replicas})

