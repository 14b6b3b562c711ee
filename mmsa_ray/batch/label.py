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
(mmsa_ray.batch.utterances, an actor pool that loads the Whisper model once per actor): each file
becomes one item per spoken utterance (id `<file id>#t=<start>,<end>`, its transcript, words
and ASR confidence, and the file's earlier reliable transcripts as the model's dialogue
context; a transcript flagged unreliable is kept but not read), one item without transcript
per stretch of speech Whisper found no words in (speech = "unrecognized"),
one item without transcript (speech = "none") when it has no speech (its `--segment`
windows with --segment), or an error item when its audio cannot be read. Decode, speech
and the model each scale on their own. Items that carry a transcript (a manifest's) are
labeled as given. The speech stage caches each file's recognition under OUT/_speech/, so
no file is transcribed twice, and drops the items already committed; staging leaves out a
file whose cached items are all committed, so a finished job's re-run starts no actor.

Exactly once, across kills and re-runs
--------------------------------------
Ray Data's own checkpointing does the bookkeeping (see mmsa_ray.batch.staging): on start-up the
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
(mmsa_ray.batch.attempts), so an item that killed its worker `max_decode_attempts` times in one
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.fs as pafs

from mmsa_ray import console
from mmsa_ray.batch.attempts import (
    ATTEMPTS_DIR,
    AttemptLog,
    current_job,
    watchdog_s,
)
from mmsa_ray.batch.decode import decode_batch, item_tasks
from mmsa_ray.batch.faces import FaceStageConfig, add_face_args, face_stage, face_stage_from_args, fitted
from mmsa_ray.batch.rows import LABEL_SCHEMA, LabelPredictor
from mmsa_ray.batch.segments import segment_sources
from mmsa_ray.batch.speakers import archive_speakers, enrolled_voices
from mmsa_ray.batch.staging import (
    CHECKPOINT_DIR,
    STAGING_DIR,
    committed_ids,
    nothing_to_restore,
    remove_inprogress,
    stage_sources,
)
from mmsa_ray.batch.summary import LabelSummary, summarize
from mmsa_ray.batch.utterances import (
    SpeechStageConfig,
    actor_speech_config,
    cache_uri,
    finished_files,
    rows_before,
    speech_stage,
)
from mmsa_ray.fusion import parse_fuse
from mmsa_ray.sink import ordered_parquet_datasink
from mmsa_ray.sources import (
    MEDIA_EXTENSIONS,
    list_sources,
    parse_extensions,
    resolve,
    with_file_context,
)
from mmsa_ray.speakers import SpeakerConfig

UTTERANCE_MODES = ("auto", "on", "off")


if TYPE_CHECKING:
    from mmsa_ray.speech import SpeechConfig

FILES_DIR = "_files"  # with --segment / --utterances: the listed files, before they become items

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
    # one row per spoken utterance (mmsa_ray.batch.utterances): "on", "off", or "auto" = on when the
    # checkpoint uses text alone (without a transcript it would see nothing), else off
    utterances: str = "auto"
    speech: SpeechConfig = field(default_factory=_default_speech)  # what the speech stage runs
    asr: SpeechStageConfig = field(default_factory=SpeechStageConfig)  # the speech actor pool
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)  # who speaks when (with utterances)
    faces: FaceStageConfig = field(default_factory=FaceStageConfig)  # who is on screen, their expression
    fuse: dict[str, float] | None = None  # --fuse weights (mmsa_ray.fusion.parse_fuse); None: no fused emotion

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


# ----------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class LabelPlan:
    """What one run does, settled from its config and checkpoint before Ray starts: a missing,
    unfinished or foreign checkpoint, a wrong INPUT or a window too long fails here, not in
    every actor."""

    checkpoint: str  # absolute checkpoint directory (local or a shared file system: every node reads it)
    model_id: str
    modalities: tuple[str, ...]  # what the checkpoint reads
    utterances: bool  # the speech stage turns listed files into utterance items inside the pipeline
    context_turns: int  # earlier transcripts each text row carries (0: none)
    context_speakers: bool  # ... marked [same]/[other] by who said them (FeatureConfig.context_speakers)
    future_turns: int  # later transcripts each text row carries (0: none)
    timeout_s: float  # one decode's (or duration read's) own limit, seconds
    out_fs: pafs.FileSystem
    out_path: str  # OUT as a path on out_fs
    out_uri: str  # OUT as Ray Data reads and writes it

    @property
    def attempts_uri(self) -> str:
        return f"{self.out_uri}/{ATTEMPTS_DIR}"


def plan_run(config: LabelConfig) -> LabelPlan:
    from mmsa_ray.checkpoint import model_id, read_checkpoint_config
    from mmsa_ray.model import ModelConfig

    if config.checkpoint is None:
        from mmsa_ray.pretrained import default_checkpoint

        checkpoint = str(default_checkpoint())
    else:
        checkpoint = os.path.abspath(config.checkpoint)
    model_config = ModelConfig.from_dict(read_checkpoint_config(checkpoint)["model"])
    decode = model_config.decode
    modalities = tuple(model_config.modalities)
    if config.segment_s is not None and config.segment_s > decode.max_duration_s / 1.5:
        raise ValueError(f"segment_s={config.segment_s:g}: windows may run to 1.5x that, over the checkpoint's "
                         f"max_duration_s={decode.max_duration_s:g}; use at most {decode.max_duration_s / 1.5:g}")
    out_fs, out_path = resolve(config.output)
    return LabelPlan(
        checkpoint=checkpoint, model_id=model_id(checkpoint), modalities=modalities,
        utterances=config.utterances == "on" or (config.utterances == "auto" and modalities == ("text",)),
        context_turns=model_config.features.context_turns if "text" in modalities else 0,
        context_speakers=model_config.features.context_speakers,
        future_turns=model_config.features.future_turns if "text" in modalities else 0,
        timeout_s=config.decode_timeout_s or decode.timeout_s,
        out_fs=out_fs, out_path=out_path, out_uri=config.output if "://" in config.output else out_path,
    )


class ListedSources:
    """INPUT's rows as they stream into staging, with the two counts the summary needs:
    rows without a transcript, and (utterance runs) the listed file ids."""

    def __init__(self, config: LabelConfig, plan: LabelPlan):
        rows = list_sources(config.input, config.extensions)
        first = next(rows, None)  # a wrong INPUT fails here, before Ray starts
        rows = itertools.chain([] if first is None else [first], rows)
        if plan.context_turns or plan.future_turns:  # rows of one file with transcripts: each other's context
            rows = with_file_context(rows, plan.context_turns, plan.future_turns)
        self._rows = rows
        self._keep_ids = plan.utterances
        self.untranscribed = 0
        self.file_ids: set[str] = set()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._rows:
            self.untranscribed += row["transcript"] is None
            if self._keep_ids:
                self.file_ids.add(row["id"])
            yield row


@dataclass
class Staged:
    """What staging left for the pipeline: `listed` rows from INPUT, `staged` of them not yet in OUT."""

    listed: int
    staged: int
    done: np.ndarray | None  # ids committed in OUT before this run (sorted), None when none


def stage(config: LabelConfig, plan: LabelPlan, sources: ListedSources, done: np.ndarray | None,
          speakers=None) -> Staged:
    """List INPUT into OUT/_staging (or, for the speech stage, OUT/_files), leaving out ids in
    `done` (and, for the speech stage, files whose every utterance is in it); with --segment
    the files are cut into windows by Ray tasks on the way."""
    fs, path = plan.out_fs, plan.out_path
    if plan.utterances:
        cache = cache_uri(plan.out_uri, actor_speech_config(config.speech, config.asr), speakers)
        return Staged(*stage_sources(sources, fs, f"{path}/{FILES_DIR}", done,
                                     functools.partial(finished_files, cache, done)), done)
    rows: Iterable[dict[str, Any]] = sources
    if config.segment_s is not None:
        files, _ = stage_sources(sources, fs, f"{path}/{FILES_DIR}")
        if files:
            rows = segment_sources(f"{plan.out_uri}/{FILES_DIR}", config.segment_s, plan.timeout_s, plan.attempts_uri,
                                   **_task_settings(config))
        else:
            rows = ()
    return Staged(*stage_sources(rows, fs, f"{path}/{STAGING_DIR}", done), done)


def label(config: LabelConfig) -> LabelSummary:
    """Run one labeling job on the current Ray (started locally if none is): plan, stage,
    run the pipeline, summarize."""
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    t0, run_start = time.time(), datetime.now(UTC)
    plan = plan_run(config)
    speakers = config.speakers if plan.utterances and config.speakers.enabled else None
    enrolled = enrolled_voices(speakers.enroll_dir) if speakers and speakers.enroll_dir else {}  # wrong DIR: fail now
    sources = ListedSources(config, plan)
    plan.out_fs.create_dir(f"{plan.out_path}/{ATTEMPTS_DIR}", recursive=True)
    remove_inprogress(plan.out_fs, plan.out_path)
    started_ray = console.init_ray(address=config.ray_address)
    attempts = AttemptLog(plan.out_fs, f"{plan.out_path}/{ATTEMPTS_DIR}", current_job())  # this run's records
    ctx = DataContext.get_current()
    previous = ctx.checkpoint_config
    stats = "(nothing to label)"
    try:
        ckpt = CheckpointConfig(id_column="id", checkpoint_path=f"{plan.out_uri}/{CHECKPOINT_DIR}",
                                delete_checkpoint_on_success=False)
        staged = stage(config, plan, sources, committed_ids(ckpt, ctx, plan.out_uri, plan.out_fs), speakers)
        ckpt.checkpoint_manager_cls = nothing_to_restore()
        ctx.checkpoint_config = ckpt
        if staged.staged:
            # with utterances the rows are not known until the files are transcribed: no total
            with console.progress("label", None if plan.utterances else staged.staged):
                stats = run_pipeline(config, plan, staged.done, speakers)
        if speakers is not None:
            cache = cache_uri(plan.out_path, actor_speech_config(config.speech, config.asr), speakers)
            archive = archive_speakers(plan.out_fs, plan.out_path, cache, speakers, enrolled, plan.out_uri)
    finally:
        ctx.checkpoint_config = previous
        if started_ray:
            ray.shutdown()
    retried = attempts.retried()
    plan.out_fs.delete_dir_contents(f"{plan.out_path}/{ATTEMPTS_DIR}", missing_dir_ok=True)
    summary = summarize(plan.out_fs, plan.out_path, run_start, staged.listed, config.output, plan.model_id)
    if retried:
        summary.notes.append(f"{len(retried)} items were worked on again after the worker on them died (a node "
                             "or process lost): each is in OUT once")
    _add_run_notes(summary, plan, sources, staged, run_start)
    summary.seconds, summary.stats = time.time() - t0, stats
    if speakers is not None:
        summary.speakers = archive
    return summary


def _add_run_notes(summary: LabelSummary, plan: LabelPlan, sources: ListedSources, staged: Staged,
                   run_start: datetime) -> None:
    if plan.utterances:  # items are utterances: those of this run's files that earlier runs wrote were skipped
        summary.skipped = rows_before(plan.out_fs, plan.out_path, LABEL_SCHEMA, "labeled_at", run_start,
                                      sources.file_ids)
        summary.staged = summary.labeled + summary.no_signal + summary.failed + summary.skipped
    elif "text" in plan.modalities and sources.untranscribed:
        summary.notes.append(f"the checkpoint uses text, but {sources.untranscribed} of {staged.listed} items have no "
                             "transcript: --utterances transcribes their speech and labels one row per utterance")


def run_pipeline(config: LabelConfig, plan: LabelPlan, done: np.ndarray | None, speakers=None) -> str:
    """staged rows -> decode -> LabelPredictor -> OUT (under the checkpoint config already set);
    returns Ray Data's stats. In utterance runs the staged rows are files, and the speech stage
    (mmsa_ray.batch.utterances) turns them into utterance items first, dropping ids in `done`."""
    import ray
    from ray.data import ActorPoolStrategy

    device = config.device or ("cuda" if config.gpus_per_actor > 0 else "cpu")
    if plan.utterances:
        files = ray.data.read_parquet(f"{plan.out_uri}/{FILES_DIR}")
        ds = speech_stage(files, config.speech, fit_speech_actors(config), plan.out_uri, plan.attempts_uri,
                          config.max_decode_attempts, done=done, keep_transcripts=True,
                          context_turns=plan.context_turns, context_speakers=plan.context_speakers,
                          future_turns=plan.future_turns, segment_s=config.segment_s,
                          probe_timeout_s=watchdog_s(plan.timeout_s), speakers=speakers)
    else:
        ds = ray.data.read_parquet(f"{plan.out_uri}/{STAGING_DIR}")
    ds = item_tasks(ds, decode_batch, {"checkpoint": plan.checkpoint, "attempts_uri": plan.attempts_uri,
                                       "max_decode_attempts": config.max_decode_attempts,
                                       "decode_timeout_s": config.decode_timeout_s}, **_task_settings(config))
    if config.faces.enabled:
        ds = face_stage(ds, fit_face_actors(config, plan.utterances), plan.timeout_s)
    ds = ds.map_batches(
        LabelPredictor,
        fn_constructor_kwargs={"checkpoint": plan.checkpoint, "device": device, "fuse": config.fuse},
        compute=ActorPoolStrategy(min_size=config.actors[0], max_size=config.actors[1]),
        batch_size=config.batch_size,
        batch_format="numpy",
        num_gpus=config.gpus_per_actor,
        num_cpus=config.cpus_per_actor,
    )
    ds.write_datasink(ordered_parquet_datasink(plan.out_uri, config.rows_per_file, schema=LABEL_SCHEMA))
    try:
        return ds.stats()
    except Exception as e:  # noqa: BLE001 - stats are informational
        return f"(no stats: {e})"


def _task_settings(config: LabelConfig) -> dict[str, Any]:
    """item_tasks' settings from the flags: --decode-batch-size items per CPU task of --decode-cpus."""
    return {"batch_size": config.decode_batch_size, "num_cpus": config.decode_cpus,
            "max_attempts": config.max_decode_attempts}


def fit_face_actors(config: LabelConfig, with_speech: bool) -> FaceStageConfig:
    """The face actors' CPU reservation, lowered (to what is left, possibly 0: they then share)
    where the CPUs free now (a Serve app or another job may hold some) cannot also hold the
    model actors, the speech actors and one task."""
    import ray

    faces, total = config.faces, ray.available_resources().get("CPU", 0.0)
    others = config.actors[0] * config.cpus_per_actor + max(config.decode_cpus, 1.0)
    if with_speech:
        speech = fit_speech_actors(config, quiet=True)
        others += speech.actors[0] * speech.cpus_per_actor
    need = faces.actors[0] * faces.cpus_per_actor
    if faces.gpus_per_actor > 0 or others + need <= total:
        return faces
    return fitted(faces, (total - others) / faces.actors[0])


def fit_speech_actors(config: LabelConfig, quiet: bool = False) -> SpeechStageConfig:
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
    if not quiet:
        print(f"note: {total:g} CPUs cannot hold the speech actors ({need:g}), the model actors and a task "
              f"({others:g}): each speech actor reserves {cpus:g} CPUs", file=sys.stderr)
    return dataclasses.replace(asr, cpus_per_actor=cpus)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """`mmsa-ray label`'s flags, one per LabelConfig field (defaults from LabelConfig)."""
    from mmsa_ray.batch.utterances import add_stage_args
    from mmsa_ray.speakers import add_speaker_args
    from mmsa_ray.speech import add_speech_args

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
    p.add_argument("--actors", type=console.min_max, default=d.actors, metavar="MIN,MAX",
                   help=f"model actor pool size (default {d.actors[0]},{d.actors[1]})")
    p.add_argument("--gpus-per-actor", type=float, default=d.gpus_per_actor,
                   help="GPUs per model actor: 0 runs the model on CPU (default); 1 on GPU nodes")
    p.add_argument("--cpus-per-actor", type=float, default=d.cpus_per_actor,
                   help=f"CPUs reserved per model actor (default {d.cpus_per_actor:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"clips per model forward (default {d.batch_size})")
    p.add_argument("--decode-batch-size", type=int, default=d.decode_batch_size,
                   help=f"clips per decode task (default {d.decode_batch_size})")
    p.add_argument("--decode-cpus", type=float, default=d.decode_cpus,
                   help=f"CPUs per decode task (default {d.decode_cpus:g})")
    p.add_argument("--decode-timeout", type=float, default=d.decode_timeout_s, dest="decode_timeout_s",
                   help="wall-clock limit per clip decode, seconds (default: the checkpoint's, 30)")
    p.add_argument("--max-decode-attempts", type=int, default=d.max_decode_attempts,
                   help="worker deaths while decoding one file before it is recorded as failed "
                   f"(default {d.max_decode_attempts})")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file,
                   help=f"rows per output Parquet file, the unit of commit on kill/re-run (default {d.rows_per_file})")
    p.add_argument("--device", default=d.device,
                   help="model device, e.g. cpu, cuda (default: cuda if --gpus-per-actor > 0)")
    p.add_argument("--ray-address", default=d.ray_address,
                   help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or a new local Ray)")
    p.add_argument("--segment", type=float, default=d.segment_s, dest="segment_s", metavar="S",
                   help="cut each file without a window into windows of about S seconds, one row each "
                   "(id <file id>#t=<start>,<end>; a remainder under S/2 joins the last window; windows "
                   "carry no transcript); default: one row per file")
    p.add_argument("--extensions", default=",".join(d.extensions),
                   help="comma-separated media suffixes for directory/glob inputs "
                   "(default: common video and audio types)")
    p.add_argument("--utterances", nargs="?", const="on", default=d.utterances, choices=UTTERANCE_MODES,
                   help="transcribe each file's speech (faster-whisper) and label one row per spoken utterance "
                   "(id <file id>#t=<start>,<end>, with its transcript, words and the file's earlier utterances as "
                   "context); items that already have a transcript are labeled as given. --utterances alone = on; "
                   "auto (default): on when the checkpoint uses text alone, else off")
    add_speech_args(p)
    add_speaker_args(p)
    add_stage_args(p, d.asr)
    add_face_args(p, d.faces)
    return p


def parse_args(argv: list[str] | None = None) -> LabelConfig:
    from mmsa_ray.speakers import speaker_config_from_args
    from mmsa_ray.speech import speech_config_from_args

    p = build_parser()
    a = console.parse_args(p, argv)
    try:
        return LabelConfig(
            input=a.input, checkpoint=a.checkpoint, output=a.output, actors=a.actors, gpus_per_actor=a.gpus_per_actor,
            cpus_per_actor=a.cpus_per_actor, batch_size=a.batch_size, decode_batch_size=a.decode_batch_size,
            decode_cpus=a.decode_cpus, decode_timeout_s=a.decode_timeout_s, max_decode_attempts=a.max_decode_attempts,
            rows_per_file=a.rows_per_file, device=a.device, ray_address=a.ray_address,
            extensions=parse_extensions(a.extensions),
            segment_s=a.segment_s, utterances=a.utterances, speech=speech_config_from_args(a),
            asr=SpeechStageConfig(actors=a.asr_actors, cpus_per_actor=a.asr_cpus_per_actor,
                                  gpus_per_actor=a.asr_gpus_per_actor),
            speakers=speaker_config_from_args(a), faces=face_stage_from_args(a),
            fuse=parse_fuse(a.fuse) if a.fuse else None,
        )
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(label(config), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
