"""Long recordings cut into windows (`label --segment S`, and files without speech under
--utterances): the window arithmetic, and the Ray Data stage that reads each staged file's
duration from its headers (no decoding) and emits one row per window.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from mmsa_ray.batch.attempts import AttemptLog, attempt, call_with_deadline, current_job, watchdog_s
from mmsa_ray.batch.decode import item_tasks
from mmsa_ray.batch.staging import STAGING_SCHEMA
from mmsa_ray.sources import resolve


def segment_windows(duration: float, segment_s: float) -> list[tuple[float, float]]:
    """[0, duration) cut at multiples of segment_s (seconds); a remainder shorter than half a
    segment joins the last window, so every window but a short file's only one lasts
    between segment_s / 2 and 1.5 * segment_s."""
    n = max(1, int(duration // segment_s))
    if duration - n * segment_s >= segment_s / 2:
        n += 1
    bounds = [k * segment_s for k in range(n)] + [duration]
    return list(itertools.pairwise(bounds))


def split_into_segments(batch: pa.Table, segment_s: float, timeout_s: float, attempts_uri: str,
                        max_attempts: int) -> pa.Table:
    """Staged file rows -> one row per window (STAGING_SCHEMA; Ray Data map_batches).

    Rows with a window of their own, or whose duration cannot be read, pass unchanged (the
    decode stage records the cause). Window rows carry no transcript: a file's transcript
    has no timings to split it by. A file that kills the worker while its headers are read
    is, after `max_attempts` deaths, passed on whole (see mmsa_ray.batch.label's docstring)."""
    from mmsa_ray.media import DecodeConfig, probe_duration

    fs, attempts_dir = resolve(attempts_uri)
    log = AttemptLog(fs, attempts_dir, current_job())
    config = DecodeConfig(timeout_s=timeout_s)
    out = []
    for row in batch.select(STAGING_SCHEMA.names).cast(STAGING_SCHEMA).to_pylist():
        if row["start"] is not None or row["end"] is not None or not row["uri"]:
            out.append(row)
            continue
        try:
            with attempt(log, f"duration:{row['id']}", row["uri"], max_attempts) as source:
                duration = call_with_deadline(probe_duration, watchdog_s(timeout_s), source, config)
        except Exception:  # noqa: BLE001 - unreadable, hung, fatal to workers: its decode says why
            out.append(row)
            continue
        out += [{**row, "id": f"{row['id']}#t={a:g},{b:g}", "transcript": None, "start": a, "end": b, "context": None,
                 "future": None}
                for a, b in segment_windows(duration, segment_s)]
    return pa.Table.from_pylist(out, schema=STAGING_SCHEMA)


def segment_sources(files_uri: str, segment_s: float, timeout_s: float, attempts_uri: str, *, batch_size: int,
                    num_cpus: float, max_attempts: int) -> Iterator[dict[str, Any]]:
    """The staged file rows under files_uri cut into windows by Ray tasks (CPUs), streamed back."""
    import ray

    ds = item_tasks(ray.data.read_parquet(files_uri), split_into_segments,
                    {"segment_s": segment_s, "timeout_s": timeout_s, "attempts_uri": attempts_uri,
                     "max_attempts": max_attempts}, batch_size=batch_size, num_cpus=num_cpus, max_attempts=max_attempts)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()
