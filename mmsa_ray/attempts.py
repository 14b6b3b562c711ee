"""Hostile media in batch jobs: bounded attempts and a watchdog around one item's work.

PyAV can SIGSEGV or block on hostile input. Work on one item (decoding a clip, reading a
file's duration, transcribing its speech) runs in Ray tasks or actors, so a crash is a dead
worker that Ray retries. To keep a file that kills its worker every time from being retried
forever, each item's work is bracketed by an attempt record, OUT/_attempts/<sha1(key)>.json
(attempt count, Ray job id, pid, host): written before the work, deleted as soon as it
returns or raises. A record that survives therefore means "the process died working on this
item". A retried task of the same job that meets a record showing `max_attempts` deaths
does not try again: the item becomes an error row. Records of another job do not count: a
killed driver takes its workers down with it, and that says nothing about the files.
A call that blocks is bounded by `call_with_deadline` (the stuck thread is abandoned; its
worker process is reused, one thread short).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import Any

import pyarrow.fs as pafs

ATTEMPTS_DIR = "_attempts"  # per-item attempt records, under OUT


class AttemptLog:
    """OUT/_attempts/<sha1(key)>.json: exists only while an item is being worked on, or after
    the process working on it died. Deaths count within one Ray job (see module docstring)."""

    def __init__(self, fs: pafs.FileSystem, directory: str, job: str):
        self.fs, self.dir, self.job = fs, directory, job

    def _path(self, key: str) -> str:
        return f"{self.dir}/{hashlib.sha1(key.encode()).hexdigest()}.json"

    def deaths(self, key: str) -> int:
        try:
            with self.fs.open_input_stream(self._path(key)) as f:
                record = json.loads(f.read())
        except FileNotFoundError:
            return 0
        except (ValueError, OSError):
            return 1  # a record cut short by the death it records
        return int(record.get("attempts", 1)) if record.get("job") == self.job else 0

    def begin(self, key: str, attempts: int) -> None:
        record = {"id": key, "attempts": attempts, "job": self.job, "pid": os.getpid(), "host": socket.gethostname(),
                  "time": time.time()}
        with self.fs.open_output_stream(self._path(key)) as f:
            f.write(json.dumps(record).encode())

    def end(self, key: str) -> None:
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass


def current_job() -> str:
    """The Ray job id of this process ("local" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_job_id() if ray.is_initialized() else "local"


class DecodeHung(Exception):
    pass


def call_with_deadline(fn, deadline_s: float, *args, **kwargs):
    """fn(*args) in a daemon thread; DecodeHung if it has not returned after deadline_s."""
    out: dict[str, Any] = {}

    def run():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=run, daemon=True, name="mmsa-decode")
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        raise DecodeHung(f"decoder still running after {deadline_s:g} s (hung); gave up on it")
    if "error" in out:
        raise out["error"]
    return out["value"]


def open_source(uri: str):
    """Local paths go to the decoder as paths; remote URIs as pyarrow random-access files."""
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs.open_input_file(path)
    return uri[len("file://"):] if uri.startswith("file://") else uri
