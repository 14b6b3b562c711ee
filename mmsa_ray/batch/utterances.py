"""The speech stage of `label --utterances` and `transcribe`: staged file rows -> one item
per spoken utterance, in a Ray Data actor pool that loads the Whisper model once per actor
(mmsa_ray.speech.SpeechRecognizer).

    file row {id, uri, transcript, start, end}
      ─► SpeechStage (actor pool; CPUs by default, GPUs on a cluster)
      ─► items (ITEM_SCHEMA): one per utterance, id "<file id>#t=<start>,<end>" (seconds in
         the file's time), with transcript, words, asr_confidence, transcript_reliable,
         speech="found" and the file's earlier transcripts as `context` (time order, the
         last `context_turns`) and its later ones as `future` (the first `future_turns`);
         or, for a stretch of speech without words, speech="unrecognized" and no transcript

A file without speech (or without an audio stream) becomes one item without transcript
(its whole file or window), or its `--segment` windows, with speech="none"; a file whose
audio cannot be read becomes one error item whose id is the file id. With `keep_transcripts` (label), a row that already
has a transcript (a manifest's) passes through untouched, not transcribed.

Never transcribed twice: the recognizer's output for a file (its utterances, "no speech",
or why its audio could not be read) is cached under OUT before any item of the file moves
on, as OUT/_speech/<SpeechConfig.cache_key()>/<sha1(file id, uri, window)>.parquet,
written to a hidden name and renamed when complete. A re-run (after a kill -9 at any
point, or a finished run) reads the cache instead of transcribing, so it gets the same
utterances and ids; the items whose ids are already committed in OUT (`done`) are dropped
here, so a file whose utterances are all committed costs one small read. A worker death
while transcribing is bounded like a decode (mmsa_ray.batch.attempts): after `max_attempts`
deaths in one job the file becomes an error item.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from mmsa_ray import console
from mmsa_ray.batch.attempts import AttemptLog, RepeatedDeaths, attempt, call_with_deadline, current_job
from mmsa_ray.batch.speakers import FILE_SPEAKERS_SUFFIX, file_speakers_table
from mmsa_ray.batch.staging import STAGING_SCHEMA, is_done
from mmsa_ray.sources import open_media, resolve

NO_AUDIO = "no audio stream"  # media.MediaError's cause for a file without audio: no speech, not an error
SPEECH_DIR = "_speech"  # under OUT: the speech stage's cache, one folder per SpeechConfig.cache_key()

WORD_TYPE = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("word", pa.string()),
                       ("probability", pa.float64())])

# What the speech stage emits: the staging columns, then what speech recognition found.
ITEM_SCHEMA = pa.schema([
    *STAGING_SCHEMA,
    ("file_id", pa.string()),  # the listed file's (or manifest row's) id
    ("words", pa.list_(WORD_TYPE)),  # seconds in the file's time
    ("asr_confidence", pa.float64()),  # exp(mean token log-probability) of the utterance, 0..1
    ("no_speech_prob", pa.float64()),  # Whisper's probability that the segment holds no speech
    ("transcript_reliable", pa.bool_()),  # asr_confidence >= transcript_checks.MIN_CONFIDENCE; null: no transcript
    ("speaker", pa.string()),  # file-local S1, S2, ... (mmsa_ray.speakers); null: speakers off or no speech
    ("speaker_confidence", pa.float64()),  # 0..1: how clearly the voice is that speaker's
    # "found" | "unrecognized" (VAD speech without words) | "none" (no speech in the file) | null (not
    # transcribed / error)
    ("speech", pa.string()),
    ("error", pa.string()),  # null when fine; otherwise "<uri>: <cause>"
])
CACHE_SCHEMA = pa.schema([f for f in ITEM_SCHEMA if f.name not in ("context", "future")])

# `mmsa-ray transcribe`'s output: one row per utterance (or per file without speech / failed).
UTTERANCE_SCHEMA = pa.schema([
    ("id", pa.string()),  # "<file id>#t=<start>,<end>"; the file id for a file without speech or an error
    ("file_id", pa.string()),  # path relative to INPUT, or the manifest's id
    ("uri", pa.string()),  # local path or cloud URI of the media
    ("start", pa.float64()),  # seconds in the file's time
    ("end", pa.float64()),
    ("transcript", pa.string()),
    ("words", pa.list_(WORD_TYPE)),
    ("asr_confidence", pa.float64()),
    ("no_speech_prob", pa.float64()),
    ("transcript_reliable", pa.bool_()),  # false: kept, but not read by label's model (low ASR confidence)
    ("speaker", pa.string()),  # file-local S1, S2, ...; OUT/_speakers.parquet maps it to the archive's speaker_id
    ("speaker_confidence", pa.float64()),
    ("speech", pa.string()),  # "found" | "unrecognized" (no transcript) | "none"; null on error rows
    ("error", pa.string()),
    ("asr_model", pa.string()),  # SpeechConfig.model + "@" + its cache key
    ("transcribed_at", pa.timestamp("us", tz="UTC")),
])


@dataclass
class SpeechStageConfig:
    """How the speech stage runs in a pipeline: its actor pool and its bookkeeping."""

    actors: tuple[int, int] = (1, 1)  # speech actor pool (min, max)
    cpus_per_actor: float = 1.0  # CPUs reserved per speech actor (also faster-whisper's threads)
    gpus_per_actor: float = 0.0  # 0: CPU actors; 1 on GPU nodes (the model then runs on cuda)

    def __post_init__(self) -> None:
        lo, hi = self.actors
        if not (1 <= lo <= hi):
            raise ValueError(f"asr actors must be MIN,MAX with 1 <= MIN <= MAX, got {self.actors}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ValueError("asr cpus/gpus per actor must be >= 0")


def actor_speech_config(speech, stage: SpeechStageConfig):
    """The SpeechConfig an actor loads: on a GPU actor a "cpu" device becomes "cuda"; threads
    default to the CPUs Ray reserved for it."""
    import dataclasses

    changes: dict[str, Any] = {}
    if stage.gpus_per_actor > 0 and speech.device == "cpu":
        changes["device"] = "cuda"
    if not speech.cpu_threads:
        changes["cpu_threads"] = max(1, int(stage.cpus_per_actor))
    return dataclasses.replace(speech, **changes)


def cache_uri(out_uri: str, speech, speakers=None) -> str:
    """Where the speech stage's output for `speech` (a SpeechConfig) and `speakers` (a
    SpeakerConfig, or None) is cached under OUT."""
    key = speech.cache_key()
    if speakers is not None and speakers.enabled:
        key += "-" + hashlib.sha256(json.dumps(speakers.key(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{out_uri}/{SPEECH_DIR}/{key}"


def _cache_name(row: dict[str, Any]) -> str:
    key = "\n".join(str(row[k]) for k in ("id", "uri", "start", "end"))
    return hashlib.sha1(key.encode()).hexdigest() + ".parquet"


def finished_files(cache: str, done: np.ndarray | None, rows: list[dict[str, Any]], threads: int = 16) -> list[bool]:
    """[len(rows)] which staged file rows (STAGING_SCHEMA) a re-run can leave out: the file's
    recognition is cached under `cache` and every item id in it is in `done` (the speech stage
    would only read that cache and drop all it yields, after starting its actors and the
    model's). Conservative: a file with segment windows, or with a transcript given, is never
    marked. Reads the caches `threads` at a time."""
    import concurrent.futures as cf

    import pyarrow.parquet as pq

    if done is None or not len(done):
        return [False] * len(rows)
    fs, cache_dir = resolve(cache)

    def finished(row: dict[str, Any]) -> bool:
        if row["transcript"] is not None or not row["uri"]:
            return False
        try:
            with fs.open_input_file(f"{cache_dir}/{_cache_name(row)}") as f:
                ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        except FileNotFoundError:
            return False
        return bool(ids) and bool(is_done(done, ids).all())

    with cf.ThreadPoolExecutor(max(1, min(threads, len(rows)))) as pool:
        return list(pool.map(finished, rows))


def file_key(item_id: str, file_ids: set[str]) -> str | None:
    """The listed file an item id belongs to (its id, or its id without the last `#t=`), or None."""
    if item_id in file_ids:
        return item_id
    head = item_id.rsplit("#t=", 1)[0]
    return head if head in file_ids else None


class SpeechStage:
    """Actor: staged file rows (STAGING_SCHEMA) -> items (ITEM_SCHEMA); see the module docstring.

    `done`: sorted ids already committed in OUT (dropped); `context_turns`: how many earlier
    transcripts each item carries (0: none); `segment_s`: a file without speech is cut into
    windows of about this many seconds (segments.segment_windows), None: one item;
    `probe_timeout_s`: limit on reading a file's duration for that; `speakers`: a
    SpeakerConfig (who speaks when; None or disabled: utterances split at pauses only);
    `context_speakers`: mark each context transcript [same]/[other] (the checkpoint reads them);
    `future_turns`: how many later transcripts each item carries (0: none)."""

    def __init__(self, speech, cache: str, attempts_uri: str, max_attempts: int, done: np.ndarray | None = None,
                 keep_transcripts: bool = False, context_turns: int = 0, segment_s: float | None = None,
                 probe_timeout_s: float = 30.0, speakers=None, context_speakers: bool = False,
                 future_turns: int = 0):
        from mmsa_ray.speech import SpeechRecognizer

        self.recognizer = SpeechRecognizer(speech)
        self.speakers = speakers if speakers is not None and speakers.enabled else None
        self.context_speakers = context_speakers
        self.fs, self.cache_dir = resolve(cache)
        self.fs.create_dir(self.cache_dir, recursive=True)
        attempts_fs, attempts_dir = resolve(attempts_uri)
        self.log = AttemptLog(attempts_fs, attempts_dir, current_job())
        self.max_attempts, self.done = max_attempts, done
        self.keep_transcripts, self.context_turns, self.future_turns = keep_transcripts, context_turns, future_turns
        self.segment_s, self.probe_timeout_s = segment_s, probe_timeout_s

    def __call__(self, batch: pa.Table) -> pa.Table:
        items: list[dict[str, Any]] = []
        for row in batch.select(STAGING_SCHEMA.names).cast(STAGING_SCHEMA).to_pylist():
            if self.keep_transcripts and row["transcript"] is not None:
                file_items = [_item(row, file_id=row["id"])]
            elif not row["uri"]:
                file_items = [_item(row, file_id=row["id"], error="no media path given for this id in the manifest")]
            else:
                file_items = self._expand(row, self._recognized(row))
            items += _with_context(file_items, self.context_turns, self.context_speakers, self.future_turns)
        items = [it for it, seen in zip(items, is_done(self.done, [it["id"] for it in items]), strict=True) if not seen]
        return pa.Table.from_pylist(items, schema=ITEM_SCHEMA)

    # the recognizer's output for one file, cached
    def _recognized(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        path = f"{self.cache_dir}/{_cache_name(row)}"
        try:
            with self.fs.open_input_file(path) as f:
                return pq.read_table(f, schema=CACHE_SCHEMA).to_pylist()
        except FileNotFoundError:
            pass
        rows, cacheable, voices = self._transcribe(row)
        if cacheable:  # the file's speakers first: a file with cached utterances always has them
            if voices is not None and voices.speakers:
                self._write(file_speakers_table(row["id"], voices.speakers), path[:-len(".parquet")] +
                            FILE_SPEAKERS_SUFFIX)
            self._write(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), path)
        return rows

    def _write(self, table: pa.Table, path: str) -> None:
        import pyarrow.parquet as pq

        tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.inprogress"
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        self.fs.move(tmp, path)

    def _transcribe(self, row: dict[str, Any]) -> tuple[list[dict[str, Any]], bool, Any]:
        """-> (rows, cacheable, the file's VoiceTrack or None): utterance rows, one "none" row,
        or one error row. Errors other than unreadable media (a network hiccup, say) are not cached."""
        from mmsa_ray.media import MediaError
        from mmsa_ray.speakers import VoiceTrack
        from mmsa_ray.speech import TranscriptionTimeout
        from mmsa_ray.utterances import utterance_rows

        id_, uri = row["id"], row["uri"]
        voices = VoiceTrack(self.speakers) if self.speakers is not None else None
        try:
            with attempt(self.log, f"speech:{id_}", uri, self.max_attempts) as source:
                utterances = self.recognizer.transcribe(source, start=row["start"], end=row["end"], voices=voices)
        except RepeatedDeaths as e:
            return [_item(row, file_id=id_, error=f"{uri}: the speech worker died {e.deaths} times on this file "
                          "(crash or kill); not retried")], True, None
        except MediaError as e:
            cause = getattr(e, "cause", None) or str(e)
            if cause == NO_AUDIO:  # a silent video: nothing to transcribe, its pictures still to label
                return [_item(row, file_id=id_, speech="none")], True, None
            return [_item(row, file_id=id_, error=f"{uri}: {cause}")], True, None
        except TranscriptionTimeout as e:  # not cached: a re-run, perhaps on a faster machine, tries again
            return [_item(row, file_id=id_, error=f"{uri}: {e}")], False, None
        except Exception as e:  # noqa: BLE001 - every failure is recorded on its row
            return [_item(row, file_id=id_, error=f"{uri}: {type(e).__name__}: {e}")], False, None
        if not utterances:
            return [_item(row, file_id=id_, speech="none")], True, None
        rows = [{**u, "uri": uri, "file_id": id_, "error": None} for u in utterance_rows(id_, utterances)]
        return rows, True, voices

    def _expand(self, row: dict[str, Any], recognized: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A file without speech, with segment_s and no window of its own -> its windows."""
        if (self.segment_s is None or len(recognized) != 1 or recognized[0]["speech"] != "none"
                or row["start"] is not None or row["end"] is not None):
            return recognized
        from mmsa_ray.batch.segments import segment_windows
        from mmsa_ray.media import DecodeConfig, probe_duration

        try:
            with open_media(row["uri"]) as source:
                duration = call_with_deadline(probe_duration, self.probe_timeout_s, source, DecodeConfig())
        except Exception:  # noqa: BLE001 - the whole file stays one item; its decode says why if it fails
            return recognized
        return [_item(row, file_id=row["id"], id=f"{row['id']}#t={a:g},{b:g}", start=a, end=b, speech="none")
                for a, b in segment_windows(duration, self.segment_s)]


def _item(row: dict[str, Any], **changes) -> dict[str, Any]:
    item = {name: None for name in ITEM_SCHEMA.names}
    item.update({k: row[k] for k in STAGING_SCHEMA.names})
    item.update(changes)
    return item


def _with_context(items: list[dict[str, Any]], turns: int, speakers: bool = False,
                  future_turns: int = 0) -> list[dict[str, Any]]:
    """Each utterance item gets the transcripts of the file's earlier ones (by start time,
    oldest first, at most `turns`) as `context` and of its later ones (at most
    `future_turns`, in time order) as `future`, unreliable ones left out; with `speakers`
    each marked by whether the item's speaker said it (utterances.marked_context); others
    get none."""
    from mmsa_ray.utterances import marked_context

    if turns <= 0 and future_turns <= 0:
        return items
    spoken = sorted((it for it in items if it["speech"] == "found"), key=lambda it: it["start"])
    readable = [(k, it["transcript"] or "", it["speaker"]) for k, it in enumerate(spoken)
                if it["transcript_reliable"] is not False]
    for k, it in enumerate(spoken):
        before = [(text, who) for j, text, who in readable if j < k][-turns:] if turns > 0 else []
        after = [(text, who) for j, text, who in readable if j > k][:future_turns] if future_turns > 0 else []
        for key, picked in (("context", before), ("future", after)):
            it[key] = [marked_context(text, who, it["speaker"]) if speakers else text for text, who in picked]
    return items


def speech_stage(ds, speech, stage: SpeechStageConfig, out_uri: str, attempts_uri: str, max_attempts: int,
                 speakers=None, **stage_kwargs):
    """ds (staged file rows) -> ds of items: the SpeechStage actor pool, one file per call,
    caching under OUT (`out_uri`) by the settings the actors run with (actor_speech_config)
    and `speakers` (a SpeakerConfig or None). `max_attempts`: worker deaths while
    transcribing one file before it is an error item."""
    from ray.data import ActorPoolStrategy

    speech = actor_speech_config(speech, stage)
    return ds.repartition(target_num_rows_per_block=1).map_batches(
        SpeechStage,
        fn_constructor_kwargs={"speech": speech, "cache": cache_uri(out_uri, speech, speakers), "speakers": speakers,
                               "attempts_uri": attempts_uri, "max_attempts": max_attempts, **stage_kwargs},
        compute=ActorPoolStrategy(min_size=stage.actors[0], max_size=stage.actors[1]),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=stage.cpus_per_actor,
        num_gpus=stage.gpus_per_actor,
    )


@dataclass
class SpeechCoverage:
    """How much of the speech a run heard has words: seconds of utterances with a transcript
    against seconds of VAD speech left "unrecognized" (speech.SpeechRecognizer), and how
    many transcripts were too doubtful to label (transcript_reliable false)."""

    transcribed_s: float = 0.0
    unrecognized_s: float = 0.0
    unrecognized: int = 0  # stretches
    unreliable: int = 0  # utterances

    def add(self, rows: pa.Table | pa.RecordBatch) -> None:
        """rows: with `speech`, `start`, `end` and `transcript_reliable` columns."""
        for speech, start, end, reliable in zip(*(rows.column(k).to_pylist() for k in
                                                  ("speech", "start", "end", "transcript_reliable")), strict=True):
            if speech == "found":
                self.transcribed_s += end - start
                self.unreliable += reliable is False
            elif speech == "unrecognized":
                self.unrecognized_s += end - start
                self.unrecognized += 1

    def __str__(self) -> str:
        heard = self.transcribed_s + self.unrecognized_s
        share = 100.0 * self.transcribed_s / heard if heard else 100.0
        return (f"speech: {self.transcribed_s:.1f} s transcribed ({share:.1f}% of the speech heard), "
                f"{self.unrecognized} stretches unrecognized ({self.unrecognized_s:.1f} s), "
                f"{self.unreliable} transcripts unreliable (not labeled from their text)")


def rows_before(fs: pafs.FileSystem, path: str, schema: pa.Schema, time_column: str, run_start: datetime,
                file_ids: set[str]) -> int:
    """Rows of OUT written before `run_start` that belong to one of `file_ids` (file_key):
    the items a run skipped because an earlier one wrote them."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    n = 0
    cutoff = pa.scalar(run_start, type=schema.field(time_column).type)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", schema=schema)
    for batch in dataset.to_batches(columns=["id", time_column]):
        older = batch.filter(pc.less(batch.column(time_column), cutoff))
        n += sum(file_key(i, file_ids) is not None for i in older.column("id").to_pylist())
    return n


def add_stage_args(p, d: SpeechStageConfig) -> None:
    """--asr-actors, --asr-cpus-per-actor, --asr-gpus-per-actor (the speech actor pool)."""
    p.add_argument("--asr-actors", type=console.min_max, default=d.actors, metavar="MIN,MAX",
                   help=f"speech recognition actor pool size (default {d.actors[0]},{d.actors[1]}); each loads the "
                   "ASR model once")
    p.add_argument("--asr-cpus-per-actor", type=float, default=d.cpus_per_actor,
                   help=f"CPUs reserved per speech actor, also its threads (default {d.cpus_per_actor:g})")
    p.add_argument("--asr-gpus-per-actor", type=float, default=d.gpus_per_actor,
                   help="GPUs per speech actor: 0 runs speech recognition on CPU (default); 1 on GPU nodes "
                   "(the ASR model then runs on cuda)")
