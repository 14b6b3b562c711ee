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
worker process is reused, one thread short), at `watchdog_s` of the work's own limit.

    with attempt(log, key, uri, max_attempts) as source:      # RepeatedDeaths past the bound
        value = call_with_deadline(work, watchdog_s(timeout_s), source)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from mmsa_ray.sources import open_media

ATTEMPTS_DIR = "_attempts"  # per-item attempt records, under OUT
RETRIED_DIR = "retried"  # under ATTEMPTS_DIR: one record per item tried again after its worker died


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

    def note_retry(self, key: str, deaths: int) -> None:
        """A lasting record that `key` is tried again after `deaths` deaths (the attempt record
        itself goes when the retry ends): what the run's summary counts."""
        record = {"id": key, "deaths": deaths, "job": self.job, "host": socket.gethostname(), "time": time.time()}
        self.fs.create_dir(f"{self.dir}/{RETRIED_DIR}", recursive=True)
        with self.fs.open_output_stream(f"{self.dir}/{RETRIED_DIR}/{hashlib.sha1(key.encode()).hexdigest()}.json") as f:
            f.write(json.dumps(record).encode())

    def retried(self) -> list[dict]:
        """The retry records of this log's job, one per item (its latest)."""
        selector = pafs.FileSelector(f"{self.dir}/{RETRIED_DIR}", allow_not_found=True)
        records = []
        for info in self.fs.get_file_info(selector):
            try:
                with self.fs.open_input_stream(info.path) as f:
                    records.append(json.loads(f.read()))
            except (OSError, ValueError):
                continue
        return [r for r in records if r.get("job") == self.job]

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


def watchdog_s(timeout_s: float) -> float:
    """The wall-clock bound on one item's work whose own limit is `timeout_s` seconds (a decode's
    DecodeConfig.timeout_s): twice that plus 10 s, so the decoder's own, clearer timeout error
    fires first and only a call that ignores its limit (blocked inside FFmpeg) meets this one."""
    return 2.0 * timeout_s + 10.0


class RepeatedDeaths(Exception):
    """The process working on this item died `deaths` times in this job: do not try again."""

    def __init__(self, deaths: int):
        super().__init__(f"died {deaths} times on this item")
        self.deaths = deaths


@contextlib.contextmanager
def attempt(log: AttemptLog, key: str, uri: str, max_attempts: int) -> Iterator[Any]:
    """One attempt at an item's work, bracketed by its attempt record: raises RepeatedDeaths
    (before opening anything) once `max_attempts` deaths are recorded for `key`; otherwise
    records the attempt and yields the opened source (sources.open_media), closing it and
    removing the record however the work ends."""
    deaths = log.deaths(key)  # one read of the record (a remote request on cloud OUT)
    if deaths >= max_attempts:
        raise RepeatedDeaths(deaths)
    if deaths:
        log.note_retry(key, deaths)
    log.begin(key, deaths + 1)
    try:
        with open_media(uri) as source:
            yield source
    finally:
        log.end(key)
