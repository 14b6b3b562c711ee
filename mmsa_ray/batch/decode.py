"""The decode stage of `mmsa-ray label`: staged rows -> the model's input features, in CPU
tasks (Ray Data map_batches), one bad item never failing its batch.

`item_tasks` runs a function over items in retry-bounded CPU tasks (it also runs the
duration reads of --segment); `decode_batch` is the decode itself: PyAV + features
through the checkpoint's Preprocessing, each item bracketed by its attempt record and a
watchdog (mmsa_ray.batch.attempts).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import numpy as np
import pyarrow as pa

from mmsa_ray.batch.attempts import AttemptLog, RepeatedDeaths, attempt, call_with_deadline, current_job, watchdog_s
from mmsa_ray.batch.staging import STAGING_SCHEMA
from mmsa_ray.features import FEATURE_KEYS
from mmsa_ray.sources import resolve
from mmsa_ray.utterances import model_transcript

# what the speech stage adds to a labeled row
SPEECH_COLUMNS = ("asr_confidence", "transcript_reliable", "words", "speech", "speaker", "speaker_confidence")


def item_tasks(ds, fn, fn_kwargs: dict[str, Any], *, batch_size: int, num_cpus: float, max_attempts: int):
    """ds.map_batches(fn, **fn_kwargs) over `batch_size` rows in CPU tasks (pyarrow batches),
    retried while an item may still kill its worker: `max_attempts` times each, then fn (which
    gets its own attempt bound in fn_kwargs) passes it over."""
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but has no named `max_retries` yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.repartition(target_num_rows_per_block=batch_size).map_batches(
            fn,
            batch_size=batch_size,
            batch_format="pyarrow",
            fn_kwargs=fn_kwargs,
            num_cpus=num_cpus,
            max_retries=max_attempts * batch_size + 2,
        )


@functools.lru_cache(maxsize=4)
def _preprocessing(checkpoint: str, decode_timeout_s: float | None):
    """One Preprocessing (configs + tokenizer) per worker process and settings."""
    from mmsa_ray.predict import Preprocessing

    prep = Preprocessing.from_checkpoint(checkpoint)
    if decode_timeout_s is not None:
        prep.decode_config = dataclasses.replace(prep.decode_config, timeout_s=float(decode_timeout_s))
    zeros = {k: np.zeros_like(v) for k, v in prep.dummy_features().items()}
    return prep, zeros


def decode_batch(
    batch: pa.Table,
    checkpoint: str,
    attempts_uri: str,
    max_decode_attempts: int,
    decode_timeout_s: float | None,
) -> pa.Table:
    """Staging rows (STAGING_SCHEMA) -> the same rows + `error` (string, null when fine)
    + one tensor column per feature key (mmsa_ray.features shapes; zeros on error rows).
    Speech-stage items (utterances.ITEM_SCHEMA) are decoded with their `context`; an item
    that comes with an error is not decoded; SPEECH_COLUMNS pass through.

    Never raises for one bad item: MediaError and any other exception become that row's
    `error` ("<uri>: <cause>"). Columns are typed explicitly: a batch whose errors are all
    null must still carry a string column."""
    from ray.data.extensions import ArrowTensorArray

    prep, zeros = _preprocessing(checkpoint, decode_timeout_s)
    fs, attempts_dir = resolve(attempts_uri)
    log = AttemptLog(fs, attempts_dir, current_job())
    rows = batch.select(STAGING_SCHEMA.names).cast(STAGING_SCHEMA).to_pylist()
    given_errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(rows)
    if "transcript_reliable" in batch.column_names:  # an unreliable transcript is kept, not read
        for row, reliable in zip(rows, batch.column("transcript_reliable").to_pylist(), strict=True):
            row["transcript_reliable"] = reliable
    errors: list[str | None] = []
    feats: list[dict[str, np.ndarray]] = []
    for row, given_error in zip(rows, given_errors, strict=True):
        # an error from the speech stage (the file could not be read) is the row's error
        outcome = given_error if given_error is not None else _decode_row(row, prep, log, max_decode_attempts)
        failed = isinstance(outcome, str)
        errors.append(outcome if failed else None)
        feats.append(zeros if failed else outcome)
    columns = {k: pa.array([r[k] for r in rows], STAGING_SCHEMA.field(k).type)
               for k in STAGING_SCHEMA.names if k not in ("context", "future")}
    columns["error"] = pa.array(errors, pa.string())
    columns.update({k: batch.column(k) for k in SPEECH_COLUMNS if k in batch.column_names})
    for k in FEATURE_KEYS:
        columns[k] = ArrowTensorArray.from_numpy(np.stack([f[k] for f in feats]))
    return pa.table(columns)


def _decode_row(row: dict[str, Any], prep, log: AttemptLog, max_attempts: int) -> dict[str, np.ndarray] | str:
    """One staged row's features, or the error ("<uri>: <cause>") that stands in their place."""
    from mmsa_ray.media import MediaError

    uri = row["uri"] or ""
    if not uri:
        return "no media path given for this id in the manifest"
    try:
        with attempt(log, row["id"], uri, max_attempts) as source:
            return call_with_deadline(prep, watchdog_s(prep.decode_config.timeout_s), source,
                                      transcript=model_transcript(row), start=row["start"], end=row["end"],
                                      context=row["context"], future=row["future"])
    except RepeatedDeaths as e:
        return f"{uri}: the decoding worker died {e.deaths} times on this file (crash or kill); not retried"
    except MediaError as e:
        return f"{uri}: {getattr(e, 'cause', None) or e}"
    except Exception as e:  # noqa: BLE001 - every failure is recorded on its row
        return f"{uri}: {type(e).__name__}: {e}"
