"""`mmsa-ray label INPUT [--checkpoint DIR] --output OUT`: label a video archive into Parquet.

The Ray Data pipeline, streaming end to end (nothing is materialized, nothing but the
final counts comes back to the driver):

    list sources ─► [--segment: cut files into windows] ─► [skip ids done in OUT]
      ─► OUT/_staging/*.parquet ─► read_parquet
      [--utterances: OUT/_files/*.parquet ─► read_parquet ─► speech stage (actor pool) ─► utterances]
      ─► repartition(decode_batch_size rows) ─► decode + features   (CPU tasks)
      ─► LabelPredictor                        (actor pool, CPU or GPU)
      ─► Parquet files in OUT (sink.py)        (fixed LABEL_SCHEMA, atomic files)

INPUT is a directory (searched recursively for media extensions), a glob, or a manifest
(.csv / .parquet / .jsonl with a `path` column and optional `id`, `transcript`, `start`,
`end`, `context`); see mmsa_ray.sources. When the checkpoint reads dialogue context, a row
with a transcript and no `context` of its own gets its file's earlier rows' transcripts.
Paths may be local or cloud URIs (s3://, gs://, anything pyarrow.fs resolves); remote
media is streamed through pyarrow, never copied to disk.

One row per input item, always. A file that cannot be decoded (corrupt, empty,
truncated, too long, too large, no streams) becomes a row whose `error` says why; the job
still exits 0 and prints labeled / failed / skipped counts.

Long recordings (`--segment S`): each listed file without a window is cut into windows of
about S seconds, each an item of its own (id `<file id>#t=<start>,<end>`). The files are
listed to OUT/_files/ first; Ray tasks read each one's duration from its headers
(media.probe_duration, no decoding) and the windows stream back to the driver, which
stages those not yet in OUT. A file whose duration cannot be read stays one item, whose
decode then records why.

Utterances (`--utterances`; default `auto`: on when the checkpoint uses text alone)
---------------------------------------------------------------------------------
The listed files go to OUT/_files/ and the pipeline starts with the speech stage
(mmsa_ray.utterances, an actor pool that loads the Whisper model once per actor): each file
becomes one item per spoken utterance (id `<file id>#t=<start>,<end>`, its transcript, words
and ASR confidence, and the file's earlier transcripts as the model's dialogue context),
one item without transcript (speech = "none") when it has no speech (its `--segment`
windows with --segment), or an error item when its audio cannot be read. Decode, speech
and the model each scale on their own. Items that carry a transcript (a manifest's) are
labeled as given. The speech stage caches each file's recognition under OUT/_speech/, so
no file is transcribed twice, and drops the items already committed.

Exactly once, across kills and re-runs
--------------------------------------
Ray Data's own checkpointing does the bookkeeping (see mmsa_ray.staging): on start-up the
driver deletes the data files of uncommitted writes and loads the committed ids; only ids
not among them are staged (or, with --utterances, passed on by the speech stage). So a job
killed at any point (driver or worker, kill -9) and run again leaves every input id in OUT
exactly once. `delete_checkpoint_on_success` is off: the committed id lists are what make a
later re-run skip finished work. Each data file is written to a hidden
`.<name>.inprogress` file and renamed when complete, so a partially written file never
looks like output (readers such as pyarrow.dataset and pandas skip names starting with '.'
or '_').

Crashing and hanging decoders
-----------------------------
Decoding runs in Ray tasks (not in the model actors), so a PyAV crash is a dead worker and
Ray retries the task; each item's decode is bracketed by an attempt record
(mmsa_ray.attempts), so an item that killed its worker `max_decode_attempts` times in one
job becomes an error row ("the decoding worker died N times...") instead of being retried
forever. Task retries are bounded accordingly (`max_decode_attempts * decode_batch_size + 2`).
A decoder that blocks is bounded twice: DecodeConfig.timeout_s inside decode_clip (raises
MediaError), and a watchdog that gives up on a decode still running after
`2 * timeout_s + 10` s.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mmsa_ray import console
from mmsa_ray.attempts import ATTEMPTS_DIR, AttemptLog, DecodeHung, current_job  # noqa: F401 - label.DecodeHung
from mmsa_ray.attempts import call_with_deadline as _call_with_deadline
from mmsa_ray.attempts import open_source as _open_source
from mmsa_ray.sink import ordered_parquet_datasink
from mmsa_ray.staging import (CHECKPOINT_DIR, STAGING_DIR, STAGING_SCHEMA, nothing_to_restore, remove_inprogress,
                              stage_sources)
from mmsa_ray.staging import committed_ids as _committed_ids
from mmsa_ray.staging import str_or_none as _str_or_none
from mmsa_ray.sources import MEDIA_EXTENSIONS, float_or_none, list_sources, resolve, with_file_context
from mmsa_ray.segments import split_into_segments
from mmsa_ray.utterances import WORD_TYPE, SpeechStageConfig, rows_before, speech_stage

UTTERANCE_MODES = ("auto", "on", "off")

FEATURE_KEYS = ("video", "audio", "input_ids", "attention_mask", "mask")
SPEECH_COLUMNS = ("asr_confidence", "words", "speech")  # what the speech stage adds to a labeled row

if TYPE_CHECKING:
    from mmsa_ray.speech import SpeechConfig

FILES_DIR = "_files"  # with --segment / --utterances: the listed files, before they become items

# One row per input item. Probabilities follow labels.EMOTIONS (7) and labels.SENTIMENTS (3);
# every prediction column is null on error rows.
LABEL_SCHEMA = pa.schema([
    ("id", pa.string()),  # unique per item: path relative to INPUT, the manifest's id, or uri#t=start,end
    ("uri", pa.string()),  # local path or cloud URI of the media
    ("start", pa.float64()),  # window start, seconds (null: from the beginning)
    ("end", pa.float64()),  # window end, seconds (null: to the end; longer than max_duration_s is an error)
    ("transcript", pa.string()),  # from the manifest or speech recognition (--utterances); null when none
    ("asr_confidence", pa.float64()),  # --utterances: exp(mean token log-probability) of the transcript, 0..1
    ("words", pa.list_(WORD_TYPE)),  # --utterances: {start, end, word, probability}, seconds in the file's time
    ("speech", pa.string()),  # --utterances: "found", or "none" (no speech in the file); null otherwise
    ("emotion", pa.string()),
    ("emotion_probs", pa.list_(pa.float32())),  # 7, labels.EMOTIONS order
    ("sentiment", pa.string()),
    ("sentiment_probs", pa.list_(pa.float32())),  # 3, labels.SENTIMENTS order
    ("modalities", pa.list_(pa.string())),  # present ones, labels.MODALITIES order
    ("text_emotion", pa.string()),  # each modality's own top emotion; null when absent
    ("audio_emotion", pa.string()),
    ("video_emotion", pa.string()),
    ("error", pa.string()),  # null when labeled; otherwise "<uri>: <cause>"
    ("model_id", pa.string()),  # checkpoint dir name + short hash of its weights
    ("labeled_at", pa.timestamp("us", tz="UTC")),
])


def _default_speech():
    from mmsa_ray.speech import SpeechConfig

    return SpeechConfig()


@dataclass
class LabelConfig:
    """One labeling job; `mmsa-ray label` flags map one to one onto these fields."""

    input: str  # directory, glob, or manifest (.csv/.parquet/.jsonl); local or cloud URI
    checkpoint: str | None  # model checkpoint directory (readable on every node); None: the shipped starter
    output: str  # output directory (local or cloud URI); re-runs skip ids already in it
    actors: tuple[int, int] = (1, 1)  # model actor pool (min, max)
    gpus_per_actor: float = 0.0  # 0 = CPU model actors; 1 on GPU nodes
    cpus_per_actor: float = 1.0  # CPUs reserved per model actor (also its torch threads)
    batch_size: int = 16  # clips per model forward
    decode_batch_size: int = 4  # clips per decode task
    decode_cpus: float = 1.0  # CPUs per decode task
    decode_timeout_s: float | None = None  # per-clip decode limit; None = the checkpoint's DecodeConfig.timeout_s
    max_decode_attempts: int = 3  # worker deaths while decoding one item before it is recorded as failed
    rows_per_file: int = 256  # rows per output Parquet file (the unit of commit)
    device: str | None = None  # model device; None = "cuda" when gpus_per_actor > 0, else "cpu"
    ray_address: str | None = None  # None: RAY_ADDRESS / running cluster / a new local Ray
    extensions: tuple[str, ...] = field(default=MEDIA_EXTENSIONS)  # media suffixes for directory/glob inputs
    # cut each file without a window into windows of about this many seconds, one row each
    # (see segments.segment_windows); None: one row per file
    segment_s: float | None = None
    # one row per spoken utterance (mmsa_ray.utterances): "on", "off", or "auto" = on when the
    # checkpoint uses text alone (without a transcript it would see nothing), else off
    utterances: str = "auto"
    speech: SpeechConfig = field(default_factory=_default_speech)  # what the speech stage runs
    asr: SpeechStageConfig = field(default_factory=SpeechStageConfig)  # the speech actor pool

    def __post_init__(self) -> None:
        if self.utterances not in UTTERANCE_MODES:
            raise ValueError(f"utterances must be one of {', '.join(UTTERANCE_MODES)}, got {self.utterances!r}")
        lo, hi = self.actors
        if not (1 <= lo <= hi):
            raise ValueError(f"actors must be MIN,MAX with 1 <= MIN <= MAX, got {self.actors}")
        for name in ("batch_size", "decode_batch_size", "max_decode_attempts", "rows_per_file"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0 or self.decode_cpus <= 0:
            raise ValueError("gpus_per_actor and cpus_per_actor must be >= 0, decode_cpus > 0")
        if self.segment_s is not None and not (self.segment_s > 0 and np.isfinite(self.segment_s)):
            raise ValueError(f"segment_s must be a number of seconds > 0, got {self.segment_s}")


@dataclass
class LabelSummary:
    """What a run did. `skipped`: ids already in OUT from an earlier run."""

    staged: int  # items listed from INPUT
    labeled: int  # rows written by this run without error
    failed: int  # rows written by this run with an error
    skipped: int  # items not processed because OUT already has them
    total_rows: int  # rows in OUT after the run
    seconds: float
    output: str
    errors: list[tuple[str, str]] = field(default_factory=list)  # a few (id, error) of this run
    stats: str = ""  # Ray Data's per-operator stats of this run
    other_model_rows: int = 0  # rows in OUT labeled by a model other than this run's checkpoint
    notes: list[str] = field(default_factory=list)  # hints for the user, printed last

    def __str__(self) -> str:
        lines = [
            f"labeled {self.labeled}, failed {self.failed}, skipped {self.skipped} (already in output) "
            f"of {self.staged} items in {self.seconds:.1f} s; {self.output} holds {self.total_rows} rows",
        ]
        lines += [f"  failed: {i}: {e}" for i, e in self.errors]
        if self.other_model_rows:
            lines.append(f"  note: {self.other_model_rows} rows in {self.output} come from another model (see "
                         "model_id); ids already there are never relabeled: give a new --output to relabel them")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- segments


def segment_sources(files_uri: str, config: LabelConfig, attempts_uri: str, timeout_s: float) -> Iterator[dict[str, Any]]:
    """The staged file rows under files_uri cut into windows by Ray tasks (CPUs), streamed back."""
    import ray

    ds = _item_tasks(ray.data.read_parquet(files_uri), split_into_segments, config, segment_s=config.segment_s,
                     timeout_s=timeout_s, attempts_uri=attempts_uri, max_attempts=config.max_decode_attempts)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        yield from batch.to_pylist()


def _item_tasks(ds, fn, config: LabelConfig, **fn_kwargs):
    """ds.map_batches(fn) over decode_batch_size rows in CPU tasks (pyarrow batches), retried
    while an item may still kill its worker: max_decode_attempts times each, then fn passes it over."""
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but has no named `max_retries` yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.repartition(target_num_rows_per_block=config.decode_batch_size).map_batches(
            fn,
            batch_size=config.decode_batch_size,
            batch_format="pyarrow",
            fn_kwargs=fn_kwargs,
            num_cpus=config.decode_cpus,
            max_retries=config.max_decode_attempts * config.decode_batch_size + 2,
        )


# ----------------------------------------------------------------------------- decode stage


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

    from mmsa_ray.media import MediaError

    prep, zeros = _preprocessing(checkpoint, decode_timeout_s)
    fs, attempts_dir = resolve(attempts_uri)
    log = AttemptLog(fs, attempts_dir, current_job())
    deadline = 2.0 * prep.decode_config.timeout_s + 10.0
    rows = batch.select(STAGING_SCHEMA.names).cast(STAGING_SCHEMA).to_pylist()
    given_errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(rows)
    errors: list[str | None] = []
    feats: list[dict[str, np.ndarray]] = []
    for i, row in enumerate(rows):
        id_, uri, transcript, start, end, context = (row[k] for k in ("id", "uri", "transcript", "start", "end", "context"))
        uri = uri or ""
        if given_errors[i] is not None:  # the speech stage could not read the file
            errors.append(given_errors[i])
            feats.append(zeros)
            continue
        deaths = log.deaths(id_)
        if deaths >= max_decode_attempts:
            errors.append(f"{uri}: the decoding worker died {deaths} times on this file (crash or kill); not retried")
            feats.append(zeros)
            continue
        if not uri:
            errors.append("no media path given for this id in the manifest")
            feats.append(zeros)
            continue
        log.begin(id_, deaths + 1)
        source = None
        try:
            source = _open_source(uri)
            f = _call_with_deadline(prep, deadline, source, transcript=transcript, start=start, end=end,
                                    context=context)
            errors.append(None)
            feats.append(f)
        except MediaError as e:
            errors.append(f"{uri}: {getattr(e, 'cause', None) or e}")
            feats.append(zeros)
        except Exception as e:  # noqa: BLE001 - every failure is recorded on its row
            errors.append(f"{uri}: {type(e).__name__}: {e}")
            feats.append(zeros)
        finally:
            if source is not None and not isinstance(source, str):
                source.close()
            log.end(id_)
    columns = {k: pa.array([r[k] for r in rows], STAGING_SCHEMA.field(k).type) for k in STAGING_SCHEMA.names if k != "context"}
    columns["error"] = pa.array(errors, pa.string())
    columns.update({k: batch.column(k) for k in SPEECH_COLUMNS if k in batch.column_names})
    for k in FEATURE_KEYS:
        columns[k] = ArrowTensorArray.from_numpy(np.stack([f[k] for f in feats]))
    return pa.table(columns)


# ----------------------------------------------------------------------------- model stage


class LabelPredictor:
    """Actor: features of good rows -> Predictor.predict_batch; error rows pass through.
    Returns a pyarrow.Table in LABEL_SCHEMA (no feature columns)."""

    def __init__(self, checkpoint: str, device: str):
        import torch

        from mmsa_ray.predict import Predictor

        if device == "cpu":
            torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.predictor = Predictor.from_checkpoint(checkpoint, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["id"])
        errors = [_str_or_none(e) for e in batch["error"]]
        good = [i for i in range(n) if errors[i] is None]
        preds: dict[int, dict[str, Any]] = {}
        if good:
            rows = self.predictor.predict_batch({k: batch[k][good] for k in FEATURE_KEYS})
            preds = dict(zip(good, rows))
        now = datetime.now(timezone.utc)
        columns: dict[str, list] = {name: [] for name in LABEL_SCHEMA.names}
        for i in range(n):
            p = preds.get(i, {})
            columns["id"].append(str(batch["id"][i]))
            columns["uri"].append(str(batch["uri"][i]))
            columns["start"].append(float_or_none(batch["start"][i]))
            columns["end"].append(float_or_none(batch["end"][i]))
            columns["transcript"].append(_str_or_none(batch["transcript"][i]))
            speech = {k: batch[k][i] if k in batch else None for k in SPEECH_COLUMNS}
            columns["asr_confidence"].append(float_or_none(speech["asr_confidence"]))
            columns["words"].append(None if speech["words"] is None else [dict(w) for w in speech["words"]])
            columns["speech"].append(_str_or_none(speech["speech"]))
            for k in ("emotion", "emotion_probs", "sentiment", "sentiment_probs", "modalities",
                      "text_emotion", "audio_emotion", "video_emotion"):
                columns[k].append(p.get(k))
            columns["error"].append(errors[i])
            columns["model_id"].append(self.predictor.model_id)
            columns["labeled_at"].append(now)
        return pa.Table.from_pydict(columns, schema=LABEL_SCHEMA)


# ----------------------------------------------------------------------------- pipeline


def label(config: LabelConfig) -> LabelSummary:
    """Run one labeling job on the current Ray (started locally if none is)."""
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    t0 = time.time()
    run_start = datetime.now(timezone.utc)
    from mmsa_ray.checkpoint import model_id, read_checkpoint_config
    from mmsa_ray.model import ModelConfig

    # A local or shared-file-system directory (every node reads it); checked up front:
    # missing, unfinished or foreign checkpoints fail here, not in every actor.
    if config.checkpoint is None:
        from mmsa_ray.pretrained import default_checkpoint

        checkpoint = str(default_checkpoint())
    else:
        checkpoint = os.path.abspath(config.checkpoint)
    model_config = ModelConfig.from_dict(read_checkpoint_config(checkpoint)["model"])
    decode = model_config.decode
    modalities = tuple(model_config.modalities)
    speech = config.utterances == "on" or (config.utterances == "auto" and modalities == ("text",))
    if config.segment_s is not None and config.segment_s > decode.max_duration_s / 1.5:
        raise ValueError(f"segment_s={config.segment_s:g}: windows may run to 1.5x that, over the checkpoint's "
                         f"max_duration_s={decode.max_duration_s:g}; use at most {decode.max_duration_s / 1.5:g}")
    out_fs, out_path = resolve(config.output)
    out_uri = config.output if "://" in config.output else out_path
    sources = list_sources(config.input, config.extensions)
    first = next(sources, None)  # a wrong INPUT fails here, before Ray starts
    sources = itertools.chain([] if first is None else [first], sources)
    context_turns = model_config.features.context_turns if "text" in modalities else 0
    if context_turns:  # rows of one file that come with transcripts: the earlier ones are each row's context
        sources = with_file_context(sources, context_turns)
    listed_ids: set[str] = set()  # --utterances: the summary counts earlier rows of these files
    untranscribed = 0  # items without a transcript, for the hint when text is left out

    def counted(rows):
        nonlocal untranscribed
        for row in rows:
            untranscribed += row["transcript"] is None
            if speech:
                listed_ids.add(row["id"])
            yield row

    sources = counted(sources)
    out_fs.create_dir(out_path, recursive=True)
    remove_inprogress(out_fs, out_path)
    attempts_uri = f"{out_uri}/{ATTEMPTS_DIR}"
    out_fs.create_dir(f"{out_path}/{ATTEMPTS_DIR}", recursive=True)

    started_ray = console.init_ray(address=config.ray_address)
    ctx = DataContext.get_current()
    previous = ctx.checkpoint_config
    stats = "(nothing to label)"
    try:
        ckpt = CheckpointConfig(id_column="id", checkpoint_path=f"{out_uri}/{CHECKPOINT_DIR}", delete_checkpoint_on_success=False)
        done = _committed_ids(ckpt, ctx, out_uri, out_fs)
        if speech:  # the speech stage turns files into utterance items inside the pipeline
            listed, staged = stage_sources(sources, out_fs, f"{out_path}/{FILES_DIR}", done)
        elif config.segment_s is not None:
            files, _ = stage_sources(sources, out_fs, f"{out_path}/{FILES_DIR}")
            timeout_s = config.decode_timeout_s or decode.timeout_s
            sources = segment_sources(f"{out_uri}/{FILES_DIR}", config, attempts_uri, timeout_s) if files else iter(())
        if not speech:
            listed, staged = stage_sources(sources, out_fs, f"{out_path}/{STAGING_DIR}", done)
        ckpt.checkpoint_manager_cls = nothing_to_restore()
        ctx.checkpoint_config = ckpt
        if staged:
            items = None
            if speech:
                items = dict(done=done, context_turns=context_turns,
                             timeout_s=config.decode_timeout_s or decode.timeout_s)
            # with --utterances the rows are not known until the files are transcribed: no total
            with console.progress("label", None if speech else staged):
                stats = _run_pipeline(config, checkpoint, out_uri, attempts_uri, items)
    finally:
        ctx.checkpoint_config = previous
        if started_ray:
            ray.shutdown()
    out_fs.delete_dir_contents(f"{out_path}/{ATTEMPTS_DIR}", missing_dir_ok=True)
    summary = summarize(out_fs, out_path, run_start, listed, config.output, model_id(checkpoint))
    if speech:  # items are utterances: those of this run's files that earlier runs wrote were skipped
        summary.skipped = rows_before(out_fs, out_path, LABEL_SCHEMA, "labeled_at", run_start, listed_ids)
        summary.staged = summary.labeled + summary.failed + summary.skipped
    elif "text" in modalities and untranscribed:
        summary.notes.append(f"the checkpoint uses text, but {untranscribed} of {listed} items have no transcript: "
                             "--utterances transcribes their speech and labels one row per utterance")
    summary.seconds = time.time() - t0
    summary.stats = stats
    return summary


def _run_pipeline(config: LabelConfig, checkpoint: str, out_uri: str, attempts_uri: str,
                  items: dict[str, Any] | None = None) -> str:
    """staged rows -> decode -> LabelPredictor -> OUT (under the checkpoint config already set);
    returns Ray Data's stats. `items` (--utterances): the staged rows are files, and the
    speech stage (mmsa_ray.utterances) turns them into utterance items first; its keys are
    `done` (committed ids), `context_turns` and `timeout_s` (a duration read's limit)."""
    import ray
    from ray.data import ActorPoolStrategy

    device = config.device or ("cuda" if config.gpus_per_actor > 0 else "cpu")
    if items is None:
        ds = ray.data.read_parquet(f"{out_uri}/{STAGING_DIR}")
    else:
        ds = speech_stage(ray.data.read_parquet(f"{out_uri}/{FILES_DIR}"), config.speech, _fit_asr(config),
                          out_uri, attempts_uri, config.max_decode_attempts,
                          done=items["done"], keep_transcripts=True, context_turns=items["context_turns"],
                          segment_s=config.segment_s, probe_timeout_s=2.0 * items["timeout_s"] + 10.0)
    ds = _item_tasks(ds, decode_batch, config, checkpoint=checkpoint,
                     attempts_uri=attempts_uri, max_decode_attempts=config.max_decode_attempts,
                     decode_timeout_s=config.decode_timeout_s)
    ds = ds.map_batches(
        LabelPredictor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "device": device},
        compute=ActorPoolStrategy(min_size=config.actors[0], max_size=config.actors[1]),
        batch_size=config.batch_size,
        batch_format="numpy",
        num_gpus=config.gpus_per_actor,
        num_cpus=config.cpus_per_actor,
    )
    ds.write_datasink(ordered_parquet_datasink(out_uri, config.rows_per_file, schema=LABEL_SCHEMA))
    try:
        return ds.stats()
    except Exception as e:  # noqa: BLE001 - stats are informational
        return f"(no stats: {e})"


def _fit_asr(config: LabelConfig) -> SpeechStageConfig:
    """The speech actors' CPU reservation, lowered where the cluster cannot also hold the model
    actors and one task beside them (a 2-CPU laptop): Ray Data would wait for a CPU forever.
    That task takes at least 1 CPU: read_parquet lists and reads the staged files in 1-CPU tasks."""
    import ray

    asr, total = config.asr, ray.cluster_resources().get("CPU", 0.0)
    others = config.actors[0] * config.cpus_per_actor + max(config.decode_cpus, 1.0)
    need = asr.actors[0] * asr.cpus_per_actor
    if asr.gpus_per_actor > 0 or others + need <= total:
        return asr
    cpus = max(0.0, (total - others) / asr.actors[0])
    print(f"note: {total:g} CPUs cannot hold the speech actors ({need:g}), the model actors and a task "
          f"({others:g}): each speech actor reserves {cpus:g} CPUs", file=sys.stderr)
    return dataclasses.replace(asr, cpus_per_actor=cpus)


def summarize(fs: pafs.FileSystem, path: str, run_start: datetime, staged: int, output: str,
              model_id: str | None = None) -> LabelSummary:
    """Counts from OUT's `id`, `error`, `labeled_at` and `model_id` columns, read in batches."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    total = labeled = failed = other = 0
    errors: list[tuple[str, str]] = []
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=LABEL_SCHEMA)
    cutoff = pa.scalar(run_start, type=LABEL_SCHEMA.field("labeled_at").type)
    for batch in dataset.to_batches(columns=["id", "error", "labeled_at", "model_id"]):
        total += batch.num_rows
        if model_id is not None:
            other += pc.sum(pc.not_equal(batch.column("model_id"), model_id)).as_py() or 0
        this_run = pc.greater_equal(batch.column("labeled_at"), cutoff)
        is_err = pc.is_valid(batch.column("error"))
        failed_mask = pc.and_(this_run, is_err)
        failed += pc.sum(failed_mask).as_py() or 0
        labeled += pc.sum(pc.and_(this_run, pc.invert(is_err))).as_py() or 0
        if len(errors) < 10 and (pc.sum(failed_mask).as_py() or 0):
            sub = batch.filter(failed_mask)
            errors += list(zip(sub.column("id").to_pylist(), sub.column("error").to_pylist()))[: 10 - len(errors)]
    return LabelSummary(staged=staged, labeled=labeled, failed=failed, skipped=staged - labeled - failed,
                        total_rows=total, seconds=0.0, output=output, errors=errors, other_model_rows=other)


# ----------------------------------------------------------------------------- CLI


def _min_max(s: str) -> tuple[int, int]:
    parts = [int(p) for p in s.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX or N, got {s!r}")
    return parts[0], parts[1]


def parse_args(argv: list[str] | None = None) -> LabelConfig:
    from mmsa_ray.speech import add_speech_args, speech_config_from_args
    from mmsa_ray.utterances import add_stage_args

    d = LabelConfig(input="", checkpoint="", output="")
    p = argparse.ArgumentParser(
        prog="mmsa-ray label",
        description="Label videos/audio with emotion and sentiment into Parquet (Ray Data). "
        "Re-running with the same --output skips items already labeled there.",
    )
    p.add_argument("input", help="a directory (searched recursively for media), a glob, or a manifest "
                   ".csv/.parquet/.jsonl with a `path` column and optional id, transcript, start, end; "
                   "local paths or cloud URIs (s3://, gs://)")
    p.add_argument("--checkpoint", default=None,
                   help="model checkpoint directory (config.json + model.safetensors); default: the starter "
                   "checkpoint shipped in the package (text only, trained on MELD: labels need transcripts, so "
                   "--utterances is on by default with it)")
    p.add_argument("--output", required=True, help="output directory for the Parquet files (local or cloud URI)")
    p.add_argument("--actors", type=_min_max, default=d.actors, metavar="MIN,MAX",
                   help=f"model actor pool size (default {d.actors[0]},{d.actors[1]})")
    p.add_argument("--gpus-per-actor", type=float, default=d.gpus_per_actor,
                   help="GPUs per model actor: 0 runs the model on CPU (default); 1 on GPU nodes")
    p.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor,
                   help=f"CPUs reserved per model actor (default {d.cpus_per_actor:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"clips per model forward (default {d.batch_size})")
    p.add_argument("--decode-batch-size", type=int, default=d.decode_batch_size,
                   help=f"clips per decode task (default {d.decode_batch_size})")
    p.add_argument("--decode-cpus", type=float, default=d.decode_cpus, help=f"CPUs per decode task (default {d.decode_cpus:g})")
    p.add_argument("--decode-timeout", type=float, default=d.decode_timeout_s, dest="decode_timeout_s",
                   help="wall-clock limit per clip decode, seconds (default: the checkpoint's, 30)")
    p.add_argument("--max-decode-attempts", type=int, default=d.max_decode_attempts,
                   help=f"worker deaths while decoding one file before it is recorded as failed (default {d.max_decode_attempts})")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file,
                   help=f"rows per output Parquet file, the unit of commit on kill/re-run (default {d.rows_per_file})")
    p.add_argument("--device", default=d.device, help="model device, e.g. cpu, cuda (default: cuda if --gpus-per-actor > 0)")
    p.add_argument("--ray-address", default=d.ray_address,
                   help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or a new local Ray)")
    p.add_argument("--segment", type=float, default=d.segment_s, dest="segment_s", metavar="S",
                   help="cut each file without a window into windows of about S seconds, one row each "
                   "(id <file id>#t=<start>,<end>; a remainder under S/2 joins the last window; windows "
                   "carry no transcript); default: one row per file")
    p.add_argument("--extensions", default=",".join(d.extensions),
                   help="comma-separated media suffixes for directory/glob inputs (default: common video and audio types)")
    p.add_argument("--utterances", nargs="?", const="on", default=d.utterances, choices=UTTERANCE_MODES,
                   help="transcribe each file's speech (faster-whisper) and label one row per spoken utterance "
                   "(id <file id>#t=<start>,<end>, with its transcript, words and the file's earlier utterances as "
                   "context); items that already have a transcript are labeled as given. --utterances alone = on; "
                   "auto (default): on when the checkpoint uses text alone, else off")
    add_speech_args(p)
    add_stage_args(p, d.asr, _min_max)
    console.add_verbose_arg(p)
    a = p.parse_args(argv)
    console.setup(a.verbose)
    exts = tuple(e if e.startswith(".") else f".{e}" for e in (s.strip() for s in a.extensions.split(",")) if e)
    try:
        return LabelConfig(
            input=a.input, checkpoint=a.checkpoint, output=a.output, actors=a.actors, gpus_per_actor=a.gpus_per_actor,
            cpus_per_actor=a.cpus_per_actor, batch_size=a.batch_size, decode_batch_size=a.decode_batch_size,
            decode_cpus=a.decode_cpus, decode_timeout_s=a.decode_timeout_s, max_decode_attempts=a.max_decode_attempts,
            rows_per_file=a.rows_per_file, device=a.device, ray_address=a.ray_address, extensions=exts,
            segment_s=a.segment_s, utterances=a.utterances, speech=speech_config_from_args(a),
            asr=SpeechStageConfig(actors=a.asr_actors, cpus_per_actor=a.asr_cpus_per_actor,
                                  gpus_per_actor=a.asr_gpus_per_actor),
        )
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(label(config), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
