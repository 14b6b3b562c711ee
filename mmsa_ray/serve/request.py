"""The upload request of POST /v1/predict: its form fields, their checks, and the OpenAPI
description FastAPI cannot infer (the body is streamed by hand, with a size cap, so
FastAPI's own File()/Form() parameters are not used).

A field that is wrong raises RequestError(status, message): the Ingress answers it as
that status with {"error": message}. A form that passes is an UploadForm.
"""

import json
import math
from typing import Any, NamedTuple

from starlette.datastructures import UploadFile

from mmsa_ray.utterances import marked_context, model_transcript

MAX_SPEAKERS = 20  # num_speakers above this is refused (422)

# Declared by hand because the body is parsed by hand (streamed, with a size cap);
# FastAPI's own File()/Form() parameters would read the whole upload first.
PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "a video or audio file (mp4, mkv, webm, wav, ...)"},
                        "transcript": {"type": "string",
                                       "description": "what is said in the clip; omit or leave empty if unknown"},
                        "start": {"type": "number", "description": "window start, seconds (optional)"},
                        "end": {"type": "number", "description": "window end, seconds (optional)"},
                        "transcribe": {"type": "boolean", "default": True,
                                       "description": "without a transcript: transcribe the upload and add "
                                                      "`utterances`, one prediction per spoken utterance (false: the "
                                                      "whole clip only)"},
                        "context": {"type": "string",
                                    "description": "earlier utterances of the dialogue, oldest first: a JSON list of "
                                                   "strings (or of {\"text\": ..., \"speaker\": ...} objects, the "
                                                   "speaker as the upload's utterances name them: S1, S2, ...), or one "
                                                   "per line"},
                        "future": {"type": "string",
                                   "description": "later utterances of the dialogue, in time order, in the same "
                                                  "forms as `context` (a checkpoint trained with future turns reads "
                                                  "them; others ignore them)"},
                        "num_speakers": {"type": "integer", "minimum": 1, "maximum": MAX_SPEAKERS,
                                         "description": "how many people speak in the upload, when known (default: "
                                                        "estimated); `utterances` carry `speaker` S1, S2, ..."},
                    },
                }
            }
        },
    }
}
_ERROR_SCHEMA = {
    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed multipart body or empty file", **_ERROR_SCHEMA},
    413: {"description": "upload larger than max_upload_mb", **_ERROR_SCHEMA},
    415: {"description": "not multipart/form-data, or the file is not video/audio (or an animated GIF)",
          **_ERROR_SCHEMA},
    422: {"description": "missing/invalid field, or media that cannot be decoded or exceeds a limit", **_ERROR_SCHEMA},
    503: {"description": "overloaded (queue full) or a worker is unavailable; retry later", **_ERROR_SCHEMA},
    504: {"description": "the request took longer than request_timeout_s", **_ERROR_SCHEMA},
}
FORM_FIELDS = ("file", "transcript", "start", "end", "transcribe", "context", "future", "num_speakers")
# Content types a client may declare for the file part. Anything else (text/plain,
# image/png, application/json, ...) is refused before any decoding. image/gif is taken:
# `label` takes .gif files (an animated GIF is a video stream to FFmpeg), and an upload
# must not be refused for what the batch job labels; still-image types stay refused.
MEDIA_TYPES = ("video/", "audio/")
GENERIC_TYPES = ("", "application/octet-stream", "application/mp4", "application/ogg", "application/x-matroska",
                  "image/gif")


class UploadForm(NamedTuple):
    """The checked fields of one POST /v1/predict form (check_form)."""

    upload: UploadFile  # the `file` part, still open: whoever reads it closes it
    transcript: str | None  # as sent (None: no field; may be blank)
    start: float | None  # window start, seconds (None: the clip's start)
    end: float | None  # window end, seconds (None: the clip's end); > start
    transcribe: bool  # without a transcript, add `utterances` (default True)
    context: list[str] | None  # earlier utterances, oldest first, blank ones dropped
    context_speakers: list[str | None] | None = None  # who said each (None: not given)
    num_speakers: int | None = None  # speakers in the upload, when the caller knows
    future: list[str] | None = None  # later utterances, in time order, blank ones dropped
    future_speakers: list[str | None] | None = None  # who said each (None: not given)


class RequestError(Exception):
    """A client error: becomes `status` with {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def text_field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(422, f"form field {name!r} must be text, not a file")
    return value


def seconds_field(form: Any, name: str) -> float | None:
    text = text_field(form, name)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise RequestError(422, f"form field {name!r} must be a number of seconds, got {text[:40]!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RequestError(422, f"form field {name!r} must be a finite number >= 0, got {text[:40]!r}")
    return value


def bool_field(form: Any, name: str, default: bool) -> bool:
    text = text_field(form, name)
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise RequestError(422, f"form field {name!r} must be true or false, got {text[:40]!r}")


def count_field(form: Any, name: str, most: int) -> int | None:
    """An optional whole number 1..most."""
    text = text_field(form, name)
    if text is None or not text.strip():
        return None
    if not text.strip().isdigit() or not 1 <= int(text) <= most:
        raise RequestError(422, f"form field {name!r} must be a whole number from 1 to {most}, got {text[:40]!r}")
    return int(text)


def context_field(form: Any, name: str = "context") -> list[tuple[str, str | None]] | None:
    """`context` (or `future`): a JSON list of strings or of {"text", "speaker"} objects, or
    one utterance per line (blank ones dropped) -> [(text, speaker or None)]."""
    text = text_field(form, name)
    if text is None or not text.strip():
        return None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as e:
            raise RequestError(422, f"form field {name!r} starts like JSON but is not: {e}") from None
        if not isinstance(items, list) or not all(_context_item(x) for x in items):
            raise RequestError(422, f"form field {name!r} must be a JSON list of strings or of {{\"text\": ..., "
                                    "\"speaker\": ...} objects (or one utterance per line)")
        pairs = [(x, None) if isinstance(x, str) else (x["text"], x.get("speaker")) for x in items]
        return [(t, s) for t, s in pairs if t.strip()]
    return [(line, None) for line in text.splitlines() if line.strip()]


def _context_item(x: Any) -> bool:
    if isinstance(x, str):
        return True
    return (isinstance(x, dict) and isinstance(x.get("text"), str) and set(x) <= {"text", "speaker"}
            and isinstance(x.get("speaker", ""), str))


def check_form(form: Any, max_transcript_chars: int) -> UploadForm:
    """The fields of a parsed multipart form (starlette FormData), checked: RequestError for
    no parts, an unknown field, a missing file or one of a non-media type, a transcript (or
    transcript + context + future) longer than max_transcript_chars, or an end not after start."""
    if not form:
        # A body that is not multipart at all parses to zero parts.
        raise RequestError(400, "malformed multipart body: no form parts found (expected a 'file' part)")
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown form field(s) {unknown}; expected {list(FORM_FIELDS)}")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise RequestError(422, "form field 'file' (a video or audio file upload) is required")
    declared_type = (upload.content_type or "").split(";")[0].strip().lower()
    if not (declared_type.startswith(MEDIA_TYPES) or declared_type in GENERIC_TYPES):
        raise RequestError(415, f"unsupported file type {declared_type!r}; send video/*, audio/*, image/gif "
                                "or application/octet-stream")
    transcript = text_field(form, "transcript")
    if transcript is not None and len(transcript) > max_transcript_chars:
        raise RequestError(422, f"transcript has {len(transcript)} characters; the limit is "
                                f"max_transcript_chars={max_transcript_chars}")
    start, end = seconds_field(form, "start"), seconds_field(form, "end")
    if start is not None and end is not None and end <= start:
        raise RequestError(422, f"end={end:g} must be greater than start={start:g}")
    transcribe = bool_field(form, "transcribe", True)
    pairs, later = context_field(form, "context"), context_field(form, "future")
    chars = len(transcript or "") + sum(len(t) for t, _ in [*(pairs or ()), *(later or ())])
    if (pairs or later) and chars > max_transcript_chars:
        raise RequestError(422, f"transcript, context and future have {chars} characters; the limit is "
                                f"max_transcript_chars={max_transcript_chars}")
    return UploadForm(upload=upload, transcript=transcript, start=start, end=end, transcribe=transcribe,
                      context=[t for t, _ in pairs] if pairs else None,
                      context_speakers=[s for _, s in pairs] if pairs else None,
                      num_speakers=count_field(form, "num_speakers", MAX_SPEAKERS),
                      future=[t for t, _ in later] if later else None,
                      future_speakers=[s for _, s in later] if later else None)


def utterance_windows(utterances: list[dict[str, Any]], form: UploadForm) -> list[dict[str, Any]]:
    """One window per utterance of an upload: its transcript, times and speaker, the
    caller's context and the upload's earlier utterances before it, the upload's later
    utterances and then the caller's future after it (with their speakers where known,
    as the upload's utterances name them). An unreliable transcript is returned, not
    read, nor context for another."""
    def given(texts, speakers):
        return list(zip(texts or [], speakers or [None] * len(texts or []), strict=True))

    readable = [(k, model_transcript(u), u["speaker"]) for k, u in enumerate(utterances)
                if model_transcript(u) is not None]
    before, after = given(form.context, form.context_speakers), given(form.future, form.future_speakers)
    windows = []
    for k, u in enumerate(utterances):
        past = before + [(t, who) for j, t, who in readable if j < k]
        future = [(t, who) for j, t, who in readable if j > k] + after
        windows.append({"transcript": model_transcript(u), "start": u["start"], "end": u["end"],
                        "speaker": u["speaker"], "context": [t for t, _ in past],
                        "context_speakers": [who for _, who in past], "future": [t for t, _ in future],
                        "future_speakers": [who for _, who in future]})
    return windows


def marked_texts(window: dict[str, Any], key: str, marks: bool) -> list[str] | None:
    """The window's `context` or `future` texts, each marked by who said it when `marks`."""
    texts = window.get(key)
    if not marks or not texts:
        return texts
    speakers = window.get(f"{key}_speakers") or [None] * len(texts)
    return [marked_context(t, who, window.get("speaker")) for t, who in zip(texts, speakers, strict=True)]
