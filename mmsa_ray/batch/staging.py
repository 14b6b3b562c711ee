"""Exactly-once bookkeeping in a job's output directory OUT (label, transcribe).

Ray Data's own checkpointing (`ray.data.checkpoint.CheckpointConfig`, Ray 2.60) records the
ids of every committed output file: the write runs a two-phase commit per file (a
`<file>.pending.parquet` id list is written before the data file and renamed to
`<file>.parquet` after it). On start-up the driver runs Ray's restore step
(`committed_ids`): it deletes any data file whose pending id list was never committed and
loads the committed ids; only items whose id is not among them are staged
(`stage_sources`) under OUT and read back by the pipeline. Ray's planner would otherwise
filter the read with an actor pool of its own (1 CPU per actor; beside the other stages'
actors that deadlocked small machines): it is handed `nothing_to_restore()`.
Data files are written as hidden `.<name>.inprogress` files and renamed when complete;
`remove_inprogress` deletes those a killed run left.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

STAGING_DIR = "_staging"  # the listed sources, read back by read_parquet
CHECKPOINT_DIR = "_checkpoint"  # Ray Data's committed / pending id lists
STAGING_ROWS_PER_FILE = 4096

STAGING_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("uri", pa.string()),
    ("transcript", pa.string()),
    ("start", pa.float64()),
    ("end", pa.float64()),
    # the transcripts of earlier utterances of the same file or dialogue, oldest first (the
    # model's dialogue context; null: none). From the manifest's `context` column, or
    # sources.with_file_context.
    ("context", pa.list_(pa.string())),
    # the later ones, in time order (FeatureConfig.future_turns); likewise from the manifest's `future`
    ("future", pa.list_(pa.string())),
])


def str_or_none(v: Any) -> str | None:
    """A string cell from a numpy batch: None (or NaN, numpy's null) -> None."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def is_done(done: np.ndarray | None, ids: list[str]) -> np.ndarray:
    """[len(ids)] bool: which ids are in `done` (sorted ids, object dtype, or None)."""
    if done is None or not done.size or not ids:
        return np.zeros(len(ids), dtype=bool)
    ids_ = np.asarray(ids, dtype=object)
    at = np.minimum(np.searchsorted(done, ids_), done.size - 1)
    return done[at] == ids_


def stage_sources(rows: Iterable[dict[str, Any]], fs: pafs.FileSystem, staging: str,
                  done: np.ndarray | None = None,
                  finished: Callable[[list[dict[str, Any]]], list[bool]] | None = None) -> tuple[int, int]:
    """Write rows as Parquet files of STAGING_ROWS_PER_FILE rows under `staging` (replaced),
    leaving out those whose id is in `done` (sorted ids already in the output) and those
    `finished` marks (it sees the rest as STAGING_SCHEMA rows, a batch at a time).
    Returns (rows listed, rows staged)."""
    import pyarrow.parquet as pq

    fs.delete_dir_contents(staging, missing_dir_ok=True)
    fs.create_dir(staging, recursive=True)
    done = None if done is None else np.asarray(done, dtype=object)  # object: no fixed-width truncation
    listed = staged = part = 0
    buf: list[dict[str, Any]] = []

    def flush():
        nonlocal part, buf, staged
        buf = [r for r, seen in zip(buf, is_done(done, [r["id"] for r in buf]), strict=True) if not seen]
        if buf and finished is not None:
            buf = pa.Table.from_pylist(buf, schema=STAGING_SCHEMA).to_pylist()  # the types the stages see
            buf = [r for r, skip in zip(buf, finished(buf), strict=True) if not skip]
        if buf:
            table = pa.Table.from_pylist(buf, schema=STAGING_SCHEMA)
            pq.write_table(table, f"{staging}/part-{part:05d}.parquet", filesystem=fs)
            part, staged = part + 1, staged + len(buf)
        buf = []

    for row in rows:
        buf.append(row)
        listed += 1
        if len(buf) >= STAGING_ROWS_PER_FILE:
            flush()
    flush()
    return listed, staged


def committed_ids(ckpt, ctx, out_uri: str, out_fs: pafs.FileSystem) -> np.ndarray | None:
    """Ray's restore step, run on the driver: delete data files of uncommitted writes,
    then load the committed ids (sorted), or None when there are none."""
    import ray
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    ref, _ = IdColumnCheckpointManager(checkpoint_config=ckpt, data_context=ctx).load_checkpoint(out_uri, out_fs)
    return None if ref is None else ray.get(ref)


@functools.cache
def nothing_to_restore():
    """A checkpoint manager class for Ray's planner once the driver has restored (see the
    module docstring): no filter operator is planned."""
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    class NothingToRestore(IdColumnCheckpointManager):
        def load_checkpoint(self, data_file_dir=None, data_file_filesystem=None):
            return None, 0

    return NothingToRestore


def remove_inprogress(fs: pafs.FileSystem, path: str) -> None:
    """Delete `.<name>.inprogress` files left by a killed run (never visible as output)."""
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=False)):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.startswith(".") and name.endswith(".inprogress"):
            fs.delete_file(info.path)
