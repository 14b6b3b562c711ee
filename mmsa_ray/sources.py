"""Where the clips come from: INPUT (a directory, a glob or a manifest; local or a cloud
URI) -> items {id, uri, transcript, start, end} with unique ids.

    directory   every file below it with a media suffix, broken symbolic links included
                (they fail as rows); id = path relative to it (names starting with '.'
                or '_' are skipped)
    glob        matching files (fnmatch: `*` also crosses '/'); id = path relative to
                the glob's fixed prefix
    manifest    .csv / .parquet / .jsonl with `path` and optional `id`, `transcript`,
                `start`, `end` (seconds); a relative path is resolved against the
                manifest's folder; id defaults to the path, or `path#t=start,end`

Listing streams (manifests are read in record batches); only the set of ids seen so far
is kept, to reject duplicates.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

# What FFmpeg (PyAV) decodes as video or audio: video containers, animated GIF (frames and
# their delays are a video stream to FFmpeg), audio files and audio books (.m4b is MP4 audio).
MEDIA_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv",
    ".wmv", ".3gp", ".ogv", ".gif",
    ".m4a", ".m4b", ".wav", ".aif", ".aiff", ".mp3", ".ogg", ".oga", ".opus", ".flac", ".aac", ".wma",
)
MANIFEST_EXTENSIONS: tuple[str, ...] = (".csv", ".parquet", ".jsonl", ".ndjson")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Local path or cloud URI -> (pyarrow filesystem, path inside it)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _uri_of(template: str, path: str) -> str:
    """The user-facing URI of a listed `path` on the filesystem `template` came from."""
    if "://" in template:
        scheme = template.split("://", 1)[0]
        return f"{scheme}://{path.lstrip('/')}" if scheme != "file" else path
    return path


def _window_id(uri: str, start: float | None, end: float | None) -> str:
    if start is None and end is None:
        return uri
    fmt = lambda v: "" if v is None else f"{v:g}"  # noqa: E731
    return f"{uri}#t={fmt(start)},{fmt(end)}"  # W3C media-fragment syntax


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def list_sources(spec: str, extensions: tuple[str, ...] = MEDIA_EXTENSIONS) -> Iterator[dict[str, Any]]:
    """INPUT -> staging rows {id, uri, transcript, start, end, context}, ids unique (ValueError otherwise).

    directory: every file below it whose suffix is in `extensions`, id = relative path;
    glob: matching files (fnmatch; `*` also crosses '/'), id = path relative to the glob's
    fixed prefix; manifest (.csv/.parquet/.jsonl): its rows, `path` relative to the
    manifest's folder unless absolute or a URI."""
    seen: set[str] = set()
    for row in _raw_sources(spec, tuple(e.lower() for e in extensions)):
        if row["id"] in seen:
            raise ValueError(
                f"{spec}: duplicate id {row['id']!r}: ids must be unique (give the manifest an `id` column)"
            )
        seen.add(row["id"])
        yield row


def _raw_sources(spec: str, extensions: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if _is_glob(spec):
        parts = spec.split("/")
        fixed = next(i for i, p in enumerate(parts) if _is_glob(p))
        base = "/".join(parts[:fixed]) or "."
        fs, base_path = resolve(base)
        _, pattern = resolve(spec) if "://" in spec else (None, os.path.join(base_path, "/".join(parts[fixed:])))
        infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True, allow_not_found=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern))
        if not files:
            raise FileNotFoundError(f"{spec}: no files match")
        for path in files:
            yield _row(posixpath.relpath(path, base_path), _uri_of(spec, path))
        return
    fs, path = resolve(spec)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{spec}: no such file or directory")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        listed = [i.path for i in infos if i.type == pafs.FileType.File]
        if isinstance(fs, pafs.LocalFileSystem):
            listed += _broken_links(path)
        files = sorted(
            f for f in listed
            if f.lower().endswith(extensions)
            and not any(p.startswith((".", "_")) for p in posixpath.relpath(f, path).split("/"))
        )
        if not files:
            raise FileNotFoundError(f"{spec}: no media files ({', '.join(extensions)}) below it")
        for f in files:
            yield _row(posixpath.relpath(f, path), _uri_of(spec, f))
        return
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        yield from _manifest_rows(spec, fs, path)
        return
    if path.lower().endswith(extensions):
        yield _row(posixpath.basename(path), _uri_of(spec, path))
        return
    raise ValueError(f"{spec}: not a directory, glob, media file or manifest ({', '.join(MANIFEST_EXTENSIONS)})")


def _broken_links(directory: str) -> list[str]:
    """Symbolic links below a local directory whose target is gone. Arrow's listing leaves
    them out; they are listed so that each becomes a failed row, not a silent omission."""
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if os.path.islink(os.path.join(root, name)) and not os.path.exists(os.path.join(root, name))
    ]


def _row(id_: str, uri: str, transcript=None, start=None, end=None, context=None, future=None) -> dict[str, Any]:
    return {"id": id_, "uri": uri, "transcript": transcript, "start": start, "end": end, "context": context,
            "future": future}


def neighbour_transcripts(items: list[dict[str, Any]], turns: int, later: bool = False) -> list[list[str]]:
    """For each item (one file's utterances: "start", "end" in seconds, "transcript"), the
    transcripts of up to `turns` items before it in time, oldest first, or with `later` of
    up to `turns` after it, in time order; aligned with `items`."""
    order = sorted(range(len(items)), key=lambda i: (items[i]["start"] or 0.0,
                                                     math.inf if items[i]["end"] is None else items[i]["end"]))
    out: list[list[str]] = [[] for _ in items]
    for k, i in enumerate(order):
        picked = order[k + 1:k + 1 + turns] if later else order[max(0, k - turns):k]
        out[i] = [items[j]["transcript"] or "" for j in picked] if turns > 0 else []
    return out


def with_file_context(rows: Iterable[dict[str, Any]], turns: int, future_turns: int = 0) -> Iterator[dict[str, Any]]:
    """Listed rows -> the same rows, in the same order; each row with a transcript and no
    `context` (or `future`) of its own gets the transcripts of the earlier (later) rows of
    its file (same uri, by start time; at most `turns` (`future_turns`)) as its dialogue
    context. A file's rows may be anywhere in a manifest, so the listing is read whole
    first (as list_sources' id check does)."""
    rows = list(rows)
    by_file: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["transcript"] is not None and row["uri"]:
            by_file.setdefault(row["uri"], []).append(row)
    for spoken in by_file.values():
        for key, n, later in (("context", turns, False), ("future", future_turns, True)):
            if n <= 0:
                continue
            for row, around in zip(spoken, neighbour_transcripts(spoken, n, later), strict=True):
                if row.get(key) is None:
                    row[key] = around
    yield from rows


def _manifest_batches(spec: str, fs: pafs.FileSystem, path: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    lower = path.lower()
    if lower.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=8192)
    elif lower.endswith(".csv"):
        types = {"path": pa.string(), "id": pa.string(), "transcript": pa.string(), "start": pa.float64(),
                 "end": pa.float64(), "context": pa.string(), "future": pa.string()}
        with fs.open_input_stream(path) as f:
            yield from pacsv.open_csv(
                f, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
            )
    else:  # jsonl
        with fs.open_input_stream(path) as f:
            yield from pajson.read_json(f).to_batches()


def _manifest_rows(spec: str, fs: pafs.FileSystem, path: str) -> Iterator[dict[str, Any]]:
    base_uri = spec.rsplit("/", 1)[0] if "/" in spec else "."
    n = 0
    for batch in _manifest_batches(spec, fs, path):
        cols = set(batch.schema.names)
        if "path" not in cols:
            raise ValueError(f"{spec}: manifest has no `path` column (columns: {sorted(cols)})")
        data = batch.to_pydict()
        for i, p in enumerate(data["path"]):
            n += 1
            id_ = data.get("id", [None] * (i + 1))[i]
            if not p and not id_:
                raise ValueError(f"{spec}: row {n} has neither a path nor an id")
            p = str(p or "")  # no path but an id: an error row says so
            uri = p if (not p or "://" in p or os.path.isabs(p)) else (
                f"{base_uri}/{p}" if "://" in base_uri else os.path.abspath(os.path.join(os.path.dirname(path), p)))
            start = float_or_none(data.get("start", [None] * (i + 1))[i])
            end = float_or_none(data.get("end", [None] * (i + 1))[i])
            transcript = data.get("transcript", [None] * (i + 1))[i]
            transcript = (None if transcript is None or (isinstance(transcript, float) and np.isnan(transcript))
                          else str(transcript))
            id_ = _window_id(uri, start, end) if id_ is None or id_ == "" else str(id_)
            context, future = (_context_cell(spec, n, key, data.get(key, [None] * (i + 1))[i])
                               for key in ("context", "future"))
            yield _row(id_, uri, transcript, start, end, context, future)
    if n == 0:
        raise ValueError(f"{spec}: manifest has no rows")


def _context_cell(spec: str, n: int, key: str, cell: Any) -> list[str] | None:
    """A manifest's `context` (or `future`) cell: a list of strings (Parquet, JSON lines)
    or, in CSV, that list as JSON text; empty -> None."""
    if cell is None or cell == "" or (isinstance(cell, float) and np.isnan(cell)):
        return None
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except ValueError:
            cell = None
    if not isinstance(cell, list) or not all(isinstance(t, str) for t in cell):
        what = "later transcripts, in time order" if key == "future" else "earlier transcripts, oldest first"
        raise ValueError(f"{spec}: row {n}: `{key}` must be a list of strings ({what}; "
                         'in CSV as JSON text, e.g. ["Hi.", "What happened?"])')
    return cell


def parse_extensions(text: str) -> tuple[str, ...]:
    """"mp4,.mkv, wav" -> (".mp4", ".mkv", ".wav"): the --extensions flag of label and transcribe."""
    parts = (part.strip() for part in text.split(","))
    return tuple(p if p.startswith(".") else f".{p}" for p in parts if p)


@contextlib.contextmanager
def open_media(source: Any) -> Iterator[Any]:
    """A source as the decoder takes it, closed on exit: a remote URI (s3://, gs://, ...) as a
    pyarrow random-access file, file:// and local paths as a path; bytes and file objects
    pass through as they are (their owner closes them)."""
    if not (isinstance(source, str) and "://" in source):
        yield source
    elif source.startswith("file://"):
        yield source[len("file://"):]
    else:
        fs, path = pafs.FileSystem.from_uri(source)
        with fs.open_input_file(path) as f:
            yield f


def float_or_none(v: Any) -> float | None:
    """A number cell: None, "" or NaN -> None."""
    if v is None or v == "":
        return None
    v = float(v)
    return None if np.isnan(v) else v
