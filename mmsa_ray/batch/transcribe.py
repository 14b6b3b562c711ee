"""`mmsa-ray transcribe INPUT --output OUT`: the utterance table of an archive, as Parquet.

    list sources ─► OUT/_files/*.parquet ─► read_parquet
      ─► SpeechStage (actor pool; mmsa_ray.batch.utterances)  ─► Parquet files in OUT (UTTERANCE_SCHEMA)

The same inputs as `label` (a directory, a glob or a manifest; local paths or cloud URIs),
and the same bookkeeping (mmsa_ray.batch.staging): Ray Data's id checkpoint commits every output
file, a re-run skips the ids already committed, and the speech stage's cache under
OUT/_speech means no file is transcribed twice, whatever point a run was killed at.

One row per utterance (id "<file id>#t=<start>,<end>"); a stretch of speech without words is
a row with speech="unrecognized" and no transcript; a file without speech is one row with
speech="none"; a file whose audio cannot be read (or whose transcription ran past the
watchdog) is one row whose `error` says why. The job exits 0 and prints the counts and the
speech coverage.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from mmsa_ray import console
from mmsa_ray.batch.attempts import ATTEMPTS_DIR
from mmsa_ray.batch.speakers import ArchiveSpeakers, archive_speakers, enrolled_voices
from mmsa_ray.batch.staging import CHECKPOINT_DIR, committed_ids, nothing_to_restore, remove_inprogress, stage_sources
from mmsa_ray.batch.utterances import (
    UTTERANCE_SCHEMA,
    SpeechCoverage,
    SpeechStageConfig,
    actor_speech_config,
    cache_uri,
    finished_files,
    rows_before,
    speech_stage,
)
from mmsa_ray.sink import ordered_parquet_datasink
from mmsa_ray.sources import MEDIA_EXTENSIONS, list_sources, parse_extensions, resolve
from mmsa_ray.speakers import SpeakerConfig, add_speaker_args, speaker_config_from_args

if TYPE_CHECKING:
    from mmsa_ray.speech import SpeechConfig

FILES_DIR = "_files"


def _default_speech():
    from mmsa_ray.speech import SpeechConfig

    return SpeechConfig()


@dataclass
class TranscribeConfig:
    """One transcription job; `mmsa-ray transcribe` flags map onto these fields."""

    input: str  # directory, glob, or manifest (.csv/.parquet/.jsonl); local or cloud URI
    output: str  # output directory (local or cloud URI); re-runs skip ids already in it
    speech: SpeechConfig = field(default_factory=_default_speech)  # what the speech stage runs
    stage: SpeechStageConfig = field(default_factory=SpeechStageConfig)
    max_attempts: int = 3  # worker deaths while transcribing one file before it is an error row
    rows_per_file: int = 256  # rows per output Parquet file (the unit of commit)
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)  # who speaks when
    ray_address: str | None = None
    extensions: tuple[str, ...] = MEDIA_EXTENSIONS

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.rows_per_file < 1:
            raise ValueError("max_attempts and rows_per_file must be >= 1")


@dataclass
class TranscribeSummary:
    files: int  # files listed from INPUT
    utterances: int  # utterance rows written by this run
    no_speech: int  # files of this run without speech
    failed: int  # error rows written by this run
    skipped: int  # rows already in OUT from an earlier run
    total_rows: int
    seconds: float
    output: str
    errors: list[tuple[str, str]] = field(default_factory=list)
    coverage: SpeechCoverage = field(default_factory=SpeechCoverage)  # of the rows this run wrote
    speakers: ArchiveSpeakers | None = None  # OUT's speakers after the run (None: speakers off)

    def __str__(self) -> str:
        lines = [f"{self.files} files: {self.utterances} utterances and {self.no_speech} files without speech written, "
                 f"failed {self.failed}, skipped {self.skipped} (already in output) in {self.seconds:.1f} s; "
                 f"{self.output} holds {self.total_rows} rows"]
        if self.utterances or self.no_speech:  # a run that wrote rows: how much of their speech has words
            lines.append(f"  {self.coverage}")
        if self.speakers is not None:
            lines.append(f"  {self.speakers}")
        lines += [f"  failed: {i}: {e}" for i, e in self.errors]
        return "\n".join(lines)


def transcribe(config: TranscribeConfig) -> TranscribeSummary:
    """Run one transcription job on the current Ray (started locally if none is)."""
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    t0, run_start = time.time(), datetime.now(UTC)
    out_fs, out_path = resolve(config.output)
    out_uri = config.output if "://" in config.output else out_path
    speakers = config.speakers if config.speakers.enabled else None
    enrolled = enrolled_voices(speakers.enroll_dir) if speakers and speakers.enroll_dir else {}  # wrong DIR: fail now
    sources = list_sources(config.input, config.extensions)
    first = next(sources, None)  # a wrong INPUT fails here, before Ray starts
    sources = itertools.chain([] if first is None else [first], sources)
    out_fs.create_dir(out_path, recursive=True)
    remove_inprogress(out_fs, out_path)
    out_fs.create_dir(f"{out_path}/{ATTEMPTS_DIR}", recursive=True)
    file_ids: set[str] = set()

    def listed():
        for row in sources:
            file_ids.add(row["id"])
            yield row

    started_ray = False
    if not ray.is_initialized():
        ray.init(address=config.ray_address, log_to_driver=True)
        started_ray = True
    ctx = DataContext.get_current()
    previous = ctx.checkpoint_config
    try:
        ckpt = CheckpointConfig(id_column="id", checkpoint_path=f"{out_uri}/{CHECKPOINT_DIR}",
                                delete_checkpoint_on_success=False)
        done = committed_ids(ckpt, ctx, out_uri, out_fs)
        actor_speech = actor_speech_config(config.speech, config.stage)
        # a file whose one row (no speech, or an error) or every utterance is committed needs nothing more
        finished = functools.partial(finished_files, cache_uri(out_uri, actor_speech, speakers), done)
        _, staged = stage_sources(listed(), out_fs, f"{out_path}/{FILES_DIR}", done, finished)
        ckpt.checkpoint_manager_cls = nothing_to_restore()
        ctx.checkpoint_config = ckpt
        if staged:
            ds = speech_stage(ray.data.read_parquet(f"{out_uri}/{FILES_DIR}"), config.speech, config.stage,
                              out_uri, f"{out_uri}/{ATTEMPTS_DIR}", config.max_attempts, done=done, speakers=speakers)
            asr_model = f"{config.speech.model}@{actor_speech.cache_key()}"
            ds = ds.map_batches(_to_utterance_rows, fn_kwargs={"asr_model": asr_model}, batch_format="pyarrow",
                                batch_size=None)
            ds.write_datasink(ordered_parquet_datasink(out_uri, config.rows_per_file, schema=UTTERANCE_SCHEMA))
        if speakers is not None:
            cache = cache_uri(out_path, actor_speech, speakers)
            archive = archive_speakers(out_fs, out_path, cache, speakers, enrolled, out_uri)
    finally:
        ctx.checkpoint_config = previous
        if started_ray:
            ray.shutdown()
    out_fs.delete_dir_contents(f"{out_path}/{ATTEMPTS_DIR}", missing_dir_ok=True)
    summary = _summarize(out_fs, out_path, run_start, file_ids, config.output)
    summary.seconds = time.time() - t0
    if speakers is not None:
        summary.speakers = archive
    return summary


def _to_utterance_rows(batch: pa.Table, asr_model: str) -> pa.Table:
    """Speech-stage items -> UTTERANCE_SCHEMA rows, stamped with the model and the time."""
    n = batch.num_rows
    columns = {name: batch.column(name) for name in UTTERANCE_SCHEMA.names if name in batch.column_names}
    columns["asr_model"] = pa.array([asr_model] * n, pa.string())
    columns["transcribed_at"] = pa.array([datetime.now(UTC)] * n, UTTERANCE_SCHEMA.field("transcribed_at").type)
    return pa.table({name: columns[name] for name in UTTERANCE_SCHEMA.names}).cast(UTTERANCE_SCHEMA)


def _summarize(fs, path: str, run_start: datetime, file_ids: set[str], output: str) -> TranscribeSummary:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    total = utterances = no_speech = failed = 0
    errors: list[tuple[str, str]] = []
    coverage = SpeechCoverage()
    cutoff = pa.scalar(run_start, type=UTTERANCE_SCHEMA.field("transcribed_at").type)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=UTTERANCE_SCHEMA)
    columns = ["id", "speech", "error", "transcribed_at", "start", "end", "transcript_reliable"]
    for batch in dataset.to_batches(columns=columns):
        total += batch.num_rows
        new = batch.filter(pc.greater_equal(batch.column("transcribed_at"), cutoff))
        coverage.add(new)
        speech, error = new.column("speech").to_pylist(), new.column("error").to_pylist()
        utterances += speech.count("found")
        no_speech += speech.count("none")
        failed += sum(e is not None for e in error)
        pairs = zip(new.column("id").to_pylist(), error, strict=True)
        errors += [(i, e) for i, e in pairs if e is not None][: 10 - len(errors)]
    skipped = rows_before(fs, path, UTTERANCE_SCHEMA, "transcribed_at", run_start, file_ids)
    return TranscribeSummary(files=len(file_ids), utterances=utterances, no_speech=no_speech, failed=failed,
                             skipped=skipped, total_rows=total, seconds=0.0, output=output, errors=errors,
                             coverage=coverage)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> TranscribeConfig:
    from mmsa_ray.batch.utterances import add_stage_args
    from mmsa_ray.speech import add_speech_args, speech_config_from_args

    d = TranscribeConfig(input="", output="")
    p = argparse.ArgumentParser(
        prog="mmsa-ray transcribe",
        description="Transcribe the speech of videos/audio into timed utterances, as Parquet (Ray Data; "
        "faster-whisper). Re-running with the same --output skips what is already there and never "
        "transcribes a file twice.",
    )
    p.add_argument("input", help="a directory (searched recursively for media), a glob, or a manifest "
                   ".csv/.parquet/.jsonl with a `path` column and optional id, start, end; local paths or cloud URIs")
    p.add_argument("--output", required=True, help="output directory for the Parquet files (local or cloud URI)")
    add_speech_args(p)
    add_speaker_args(p)
    add_stage_args(p, d.stage)
    p.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help="worker deaths while transcribing one file before it is recorded as failed "
                   f"(default {d.max_attempts})")
    p.add_argument("--rows-per-file", type=int, default=d.rows_per_file,
                   help=f"rows per output Parquet file, the unit of commit on kill/re-run (default {d.rows_per_file})")
    p.add_argument("--ray-address", default=d.ray_address,
                   help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or a new local Ray)")
    p.add_argument("--extensions", default=",".join(d.extensions),
                   help="comma-separated media suffixes for directory/glob inputs "
                   "(default: common video and audio types)")
    a = console.parse_args(p, argv)
    try:
        return TranscribeConfig(
            input=a.input, output=a.output, speech=speech_config_from_args(a),
            stage=SpeechStageConfig(actors=a.asr_actors, cpus_per_actor=a.asr_cpus_per_actor,
                                    gpus_per_actor=a.asr_gpus_per_actor),
            max_attempts=a.max_attempts, rows_per_file=a.rows_per_file, ray_address=a.ray_address,
            extensions=parse_extensions(a.extensions), speakers=speaker_config_from_args(a),
        )
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(transcribe(config), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
