"""The HTTP front of the Serve application (see mmsa_ray.serve.deployments for the whole
picture): FastAPI routes for POST /v1/predict, the upload page and /healthz. It streams an
upload with its size counted (413 past the cap), checks the form (request.py), and calls the
Preprocessor, Speech and Model deployments through their handles. It refuses an upload at
once (503, Retry-After) past max_inflight_requests, and answers 504 naming the stage a request
was still in when request_timeout_s ran out. Every error is JSON: {"error": "..."}.

Importing this module starts nothing: no Ray, no model loading.
"""

# No `from __future__ import annotations`: Serve's FastAPI class-based views need the
# real annotation objects (a string `Request` would turn into a query parameter).
import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from mmsa_ray.serve.config import IngressLimits
from mmsa_ray.serve.request import (
    ERROR_RESPONSES,
    FORM_FIELDS,
    PREDICT_OPENAPI,
    RequestError,
    UploadForm,
    check_form,
    utterance_windows,
)
from mmsa_ray.utterances import no_speech_reason

logger = logging.getLogger("ray.serve")


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

