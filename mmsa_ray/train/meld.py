"""MELD annotation CSVs + split folders -> clip records with labels.

A MELD root (``MELD.Raw``) looks like::

    train_sent_emo.csv   dev_sent_emo.csv   test_sent_emo.csv
    train_splits/dia{Dialogue_ID}_utt{Utterance_ID}.mp4
    dev_splits_complete/dia{D}_utt{U}.mp4
    output_repeated_splits_test/dia{D}_utt{U}.mp4

`read_meld` parses one split's CSV and looks the clips up by name. It never decodes
media: a record's ``path`` is None when its clip is absent (or the whole folder is,
which gives text-only records); `check_clips` opens the present ones with PyAV and
lists those that cannot be read (MELD's ``train_splits/dia125_utt3.mp4`` is corrupt).

Strictness: a row with missing/extra fields, an unknown emotion or sentiment, a
non-integer id, an unparseable time or a duplicate (dialogue, utterance) pair raises
`MeldFormatError` naming the file and line (``strict=True``, the default), or is
skipped and listed in ``MeldSplit.skipped`` (``strict=False``). Times are not
checked for order (they are informational: clips are already cut). Text is kept as
written (typographic punctuation and MELD's occasional mojibake such as "Â’"),
only stripped of surrounding whitespace.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from mmsa_ray.labels import EMOTIONS, SENTIMENTS, emotion_index, sentiment_index
from mmsa_ray.utterances import marked_context

# split name -> (annotation CSV, clip folder), as in the MELD.Raw release.
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
# Header of every MELD CSV, in file order. "Sr No." is a running number we do not keep.
CSV_COLUMNS: tuple[str, ...] = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime",
)
_REQUIRED = CSV_COLUMNS[1:]
# hh:mm:ss,fff (SRT style). The fraction is read as a decimal fraction of a second;
# "." is accepted too because hand-edited files use it.
_TIME_RE = re.compile(r"^(\d+):([0-5]?\d):([0-5]?\d)(?:[,.](\d{1,6}))?$")


class MeldFormatError(ValueError):
    """A MELD CSV row or header that cannot be parsed; the message names file and line."""


@dataclass
class ClipRecord:
    """One MELD utterance.

    id: "<split>/dia<D>_utt<U>", unique across splits. path: absolute path of the
    clip, None when the file is absent. start_s/end_s: the utterance's position in
    the episode, seconds (float). emotion/sentiment: lowercase names from labels.py.
    """

    id: str
    path: str | None
    transcript: str
    speaker: str
    emotion: str
    sentiment: str
    dialogue_id: int
    utterance_id: int
    season: int
    episode: int
    start_s: float
    end_s: float
    split: str

    @property
    def emotion_index(self) -> int:
        """Index into labels.EMOTIONS (the model's emotion logits)."""
        return emotion_index(self.emotion)

    @property
    def sentiment_index(self) -> int:
        """Index into labels.SENTIMENTS (the model's sentiment logits)."""
        return sentiment_index(self.sentiment)


@dataclass
class ClipProblem:
    """A clip that exists but could not be opened (or decoded by a decode_fn)."""

    id: str
    path: str
    error: str


@dataclass
class MeldSplit:
    """The records of one split plus what was found on disk.

    missing: ids of records whose clip is absent (path None); with the whole clip
    folder absent that is every record (``text_only`` is True).
    skipped: "file:line: reason" for rows dropped with strict=False.
    bad: clips that failed `check_clips` (filled when read with verify=True).
    """

    split: str
    root: str
    csv_path: str
    clip_dir: str
    clip_dir_exists: bool
    records: list[ClipRecord]
    videos_found: int
    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bad: list[ClipProblem] | None = None  # None = not verified

    @property
    def text_only(self) -> bool:
        return not self.clip_dir_exists

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def emotion_counts(self) -> dict[str, int]:
        """Records per emotion, in labels.EMOTIONS order (zeros included)."""
        c = Counter(r.emotion for r in self.records)
        return {e: c[e] for e in EMOTIONS}

    def sentiment_counts(self) -> dict[str, int]:
        """Records per sentiment, in labels.SENTIMENTS order (zeros included)."""
        c = Counter(r.sentiment for r in self.records)
        return {s: c[s] for s in SENTIMENTS}

    def summary(self) -> str:
        """A few human-readable lines: counts, what is missing, what is broken."""
        lines = [f"MELD {self.split}: {len(self.records)} records from {self.csv_path}"]
        if self.text_only:
            lines.append(f"videos absent: text-only records (no folder {self.clip_dir})")
        else:
            line = f"videos: {self.videos_found} found, {len(self.missing)} missing in {self.clip_dir}"
            if self.missing:
                line += ": " + _preview(self.missing)
            lines.append(line)
        if self.bad is not None:
            line = f"unreadable clips: {len(self.bad)}"
            if self.bad:
                line += ": " + _preview([f"{b.id} ({b.error})" for b in self.bad])
            lines.append(line)
        if self.skipped:
            lines.append(f"skipped rows: {len(self.skipped)}: " + _preview(self.skipped))
        lines.append("emotions: " + ", ".join(f"{k} {v}" for k, v in self.emotion_counts().items()))
        lines.append("sentiments: " + ", ".join(f"{k} {v}" for k, v in self.sentiment_counts().items()))
        return "\n".join(lines)


def default_meld_dir() -> str | None:
    """$MELD_DIR when set and non-empty, else None (the CLI's default --meld-dir)."""
    value = os.environ.get("MELD_DIR", "").strip()
    return value or None


def clip_name(dialogue_id: int, utterance_id: int) -> str:
    """MELD's clip file name: dia{D}_utt{U}.mp4."""
    return f"dia{dialogue_id}_utt{utterance_id}.mp4"


def check_meld_root(root: str | os.PathLike, splits: Iterable[str]) -> dict[str, tuple[Path, Path]]:
    """The annotation CSV and clip folder of each split: {split: (csv, clip_dir)}, absolute.

    Raises ValueError (unknown split) or FileNotFoundError (root or a CSV missing, naming
    the expected files); a missing clip folder is allowed (text-only records). Cheap: a
    job calls it before starting any work.
    """
    root_path = Path(root).expanduser().absolute()
    out = {}
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown MELD split {split!r}; expected one of {list(SPLITS)}")
        csv_name, dir_name = SPLITS[split]
        if not root_path.is_dir():
            raise FileNotFoundError(
                f"MELD root {root_path} is not a directory; expected it to hold {csv_name} and {dir_name}/"
            )
        csv_path = root_path / csv_name
        clip_dir = root_path / dir_name
        if not csv_path.is_file():
            present = sorted(p.name for p in root_path.glob("*_sent_emo.csv"))
            raise FileNotFoundError(
                f"MELD split {split!r} needs {csv_path} (and clips in {clip_dir}/dia<D>_utt<U>.mp4); "
                f"not found. CSVs present in {root_path}: {present or 'none'}"
            )
        out[split] = (csv_path, clip_dir)
    return out


def read_meld(root: str | os.PathLike, split: str, *, strict: bool = True, verify: bool = False) -> MeldSplit:
    """Read one MELD split: its CSV, and which clips exist in its folder.

    root: the MELD.Raw directory. split: "train" | "dev" | "test".
    strict: raise MeldFormatError on the first bad row (True) or skip and list it.
    verify: also open every present clip with PyAV (`check_clips`); results in ``bad``.
    Raises FileNotFoundError (root or CSV missing, naming the expected files),
    ValueError (unknown split), MeldFormatError (bad header or row).
    """
    csv_path, clip_dir = check_meld_root(root, (split,))[split]
    rows, skipped = _parse_csv(csv_path, strict)
    clip_dir_exists = clip_dir.is_dir()
    # One directory listing instead of 10k stat calls; also ignores macOS "._" files.
    on_disk = {e.name for e in os.scandir(clip_dir) if e.is_file()} if clip_dir_exists else set()

    records: list[ClipRecord] = []
    missing: list[str] = []
    for row in rows:
        name = clip_name(row["dialogue_id"], row["utterance_id"])
        rid = f"{split}/{name[:-4]}"
        path = str(clip_dir / name) if name in on_disk else None
        if path is None:
            missing.append(rid)
        records.append(ClipRecord(id=rid, path=path, split=split, **row))

    result = MeldSplit(
        split=split, root=str(csv_path.parent), csv_path=str(csv_path), clip_dir=str(clip_dir),
        clip_dir_exists=clip_dir_exists, records=records,
        videos_found=len(records) - len(missing), missing=missing, skipped=skipped,
    )
    if verify:
        result.bad = check_clips(records)
    return result


def parse_time(text: str) -> float:
    """'hh:mm:ss,fff' -> seconds (float). ValueError on anything else."""
    m = _TIME_RE.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r} is not hh:mm:ss,fff")
    h, mnt, s, frac = m.groups()
    return int(h) * 3600 + int(mnt) * 60 + int(s) + (int(frac) / 10 ** len(frac) if frac else 0.0)


def check_clips(
    records: Iterable[ClipRecord], decode_fn: Callable[[str], object] | None = None
) -> list[ClipProblem]:
    """Open each present clip with PyAV and list the ones that fail; never raises per clip.

    The cheap check: `av.open` succeeds, there is at least one video or audio stream,
    and every such stream has a codec context (PyAV can crash decoding a stream that
    lacks one, see DESIGN.md). decode_fn(path), when given (e.g. media.decode_clip),
    runs after that and any exception it raises is recorded too. Records with
    path None are not checked (they are in MeldSplit.missing already).
    """
    import av  # lazily: reading CSVs must not need FFmpeg

    problems: list[ClipProblem] = []
    for rec in records:
        if rec.path is None:
            continue
        try:
            with av.open(rec.path) as container:
                streams = list(container.streams.video) + list(container.streams.audio)
                if not streams:
                    raise ValueError("no video or audio stream")
                for s in streams:
                    if s.codec_context is None:
                        raise ValueError(f"{s.type} stream {s.index} has no decoder (unsupported or truncated)")
            if decode_fn is not None:
                decode_fn(rec.path)
        except Exception as exc:  # per clip: one broken file must not stop the scan
            problems.append(ClipProblem(id=rec.id, path=rec.path, error=f"{type(exc).__name__}: {exc}"))
    return problems


_INT_FIELDS = ("dialogue_id", "utterance_id", "season", "episode")
_FLOAT_FIELDS = ("start_s", "end_s")
# Manifest columns, in order; the fields of ClipRecord plus the two label indices.
MANIFEST_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ClipRecord)) + ("emotion_index", "sentiment_index")


def dialogue_context(records: Iterable[ClipRecord], turns: int, speakers: bool = False, *, later: bool = False,
                     unmarked: Collection[str] = ()) -> list[list[str]]:
    """For each record, the transcripts of up to `turns` earlier utterances of its dialogue
    (same split and Dialogue_ID, lower Utterance_ID), oldest first, or with `later` the
    `turns` after it, in time order; with `speakers` each marked "[same]" or "[other]" by
    whether the record's speaker said it (utterances.marked_context), except for the
    records whose ids are in `unmarked`. Never names: label and serve know diarized
    speakers (S1, S2), not people, and training sees what inference will."""
    records = list(records)
    by_dialogue: dict[tuple[str, int], list[ClipRecord]] = {}
    for r in records:
        by_dialogue.setdefault((r.split, r.dialogue_id), []).append(r)
    unmarked = set(unmarked)
    around: dict[str, list[str]] = {}
    for rows in by_dialogue.values():
        rows.sort(key=lambda r: r.utterance_id)
        for i, r in enumerate(rows):
            picked = (rows[i + 1:i + 1 + turns] if later else rows[max(0, i - turns):i]) if turns > 0 else []
            marks = speakers and r.id not in unmarked
            around[r.id] = [marked_context(b.transcript, b.speaker or None, r.speaker or None) if marks
                            else b.transcript for b in picked]
    return [around[r.id] for r in records]


def unmarked_share(records: Iterable[ClipRecord], share: float, seed: int) -> set[str]:
    """Ids of a random `share` of the records (seeded): those read without speaker markers
    in training (TrainConfig.speaker_dropout)."""
    ids = sorted(r.id for r in records)
    rng = np.random.default_rng(seed)
    return {i for i, u in zip(ids, rng.random(len(ids)), strict=True) if u < share}


def to_columns(records: Iterable[ClipRecord]) -> dict[str, list]:
    """Records -> {column: list} in MANIFEST_COLUMNS order (path may hold None).

    For `pyarrow.table(...)`; `to_items` gives the row dicts `ray.data.from_items` wants.
    """
    cols: dict[str, list] = {c: [] for c in MANIFEST_COLUMNS}
    for item in to_items(records):
        for c in MANIFEST_COLUMNS:
            cols[c].append(item[c])
    return cols


def to_items(records: Iterable[ClipRecord]) -> list[dict]:
    """Records -> one dict per record with MANIFEST_COLUMNS keys."""
    return [
        {**asdict(r), "emotion_index": r.emotion_index, "sentiment_index": r.sentiment_index}
        for r in records
    ]


def write_manifest(records: Iterable[ClipRecord], path: str | os.PathLike, row_group_size: int | None = None,
                   contexts: list[list[str]] | None = None, futures: list[list[str]] | None = None) -> Path:
    """Write records to a .parquet or .csv manifest (MANIFEST_COLUMNS) and return its path.

    row_group_size: rows per Parquet row group (None: pyarrow's default).
    contexts: Parquet only, an extra `context` column (list of earlier transcripts per row,
    see `dialogue_context`); futures: likewise a `future` column (later transcripts).

    The file appears only when complete (written beside it, then renamed). In CSV an
    absent clip's path is an empty field; in Parquet it is null. Read back with
    `read_manifest`, `ray.data.read_parquet` or `ray.data.read_csv`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"manifest {path} must end in .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    cols = to_columns(records)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(cols, schema=_manifest_schema())
        for name, column in (("context", contexts), ("future", futures)):
            if column is not None:
                table = table.append_column(name, pa.array(column, type=pa.list_(pa.string())))
        pq.write_table(table, tmp, row_group_size=row_group_size)
    else:
        if contexts is not None or futures is not None:
            raise ValueError(f"manifest {path}: context and future columns need a .parquet manifest")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for row in zip(*(cols[c] for c in MANIFEST_COLUMNS), strict=True):
                writer.writerow(["" if v is None else v for v in row])
    os.replace(tmp, path)
    return path


def read_manifest(path: str | os.PathLike) -> list[ClipRecord]:
    """Read a manifest written by `write_manifest` back into ClipRecords.

    Raises FileNotFoundError, or MeldFormatError naming the missing columns or the bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path}: no such file")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    names = [f.name for f in fields(ClipRecord)]
    missing = [n for n in names if rows and n not in rows[0]]
    if missing:
        raise MeldFormatError(f"manifest {path}: missing column(s) {missing} (write it with meld.write_manifest)")
    out = []
    for i, row in enumerate(rows):
        kw = {n: row[n] for n in names}
        kw["path"] = kw["path"] or None  # CSV writes an absent path as ""
        try:
            for name in _INT_FIELDS:
                kw[name] = int(kw[name])
            for name in _FLOAT_FIELDS:
                kw[name] = float(kw[name])
            record = ClipRecord(**kw)
            emotion_index(record.emotion)  # known labels only
            sentiment_index(record.sentiment)
        except (TypeError, ValueError) as e:
            raise MeldFormatError(f"manifest {path}: row {i + 1} ({kw.get('id')!r}): {e}") from e
        out.append(record)
    return out


def _manifest_schema():
    import pyarrow as pa

    def kind(name: str):
        return pa.int64() if name in _INT_FIELDS else pa.float64() if name in _FLOAT_FIELDS else pa.string()

    schema = [(f.name, kind(f.name)) for f in fields(ClipRecord)]
    schema += [("emotion_index", pa.int64()), ("sentiment_index", pa.int64())]
    return pa.schema(schema)


def _parse_csv(csv_path: Path, strict: bool) -> tuple[list[dict], list[str]]:
    """Parse a MELD CSV into dicts of ClipRecord fields (no id/path/split yet)."""
    rows: list[dict] = []
    skipped: list[str] = []
    seen: dict[tuple[int, int], int] = {}
    # utf-8-sig: identical to utf-8 except that a leading BOM (Excel exports) is dropped.
    with open(csv_path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise MeldFormatError(f"{csv_path}: empty file; expected header {','.join(CSV_COLUMNS)}")
        header = [h.strip() for h in header]
        absent = [c for c in _REQUIRED if c not in header]
        if absent:
            raise MeldFormatError(
                f"{csv_path} line 1: header lacks {absent}; expected {','.join(CSV_COLUMNS)}, got {','.join(header)}"
            )
        col = {name: header.index(name) for name in _REQUIRED}
        line_end = reader.line_num
        for fields_ in reader:
            # A quoted field may span lines: name the line the record starts on.
            line, line_end = line_end + 1, reader.line_num
            if not any(f.strip() for f in fields_):
                continue  # blank line (e.g. trailing newline in hand-edited files)
            try:
                if len(fields_) != len(header):
                    raise ValueError(f"{len(fields_)} fields, header has {len(header)}")
                row = _parse_row({name: fields_[i] for name, i in col.items()})
                key = (row["dialogue_id"], row["utterance_id"])
                if key in seen:
                    raise ValueError(
                        f"duplicate Dialogue_ID {key[0]} / Utterance_ID {key[1]} (first on line {seen[key]})"
                    )
                seen[key] = line
            except ValueError as exc:
                msg = f"{csv_path} line {line}: {exc}"
                if strict:
                    raise MeldFormatError(msg + " (read with strict=False to skip bad rows)") from None
                skipped.append(msg)
                continue
            rows.append(row)
    return rows, skipped


def _parse_row(raw: dict[str, str]) -> dict:
    emotion = raw["Emotion"].strip().lower()
    sentiment = raw["Sentiment"].strip().lower()
    emotion_index(emotion)  # ValueError naming the valid set
    sentiment_index(sentiment)
    return {
        "transcript": raw["Utterance"].strip(),
        "speaker": raw["Speaker"].strip(),
        "emotion": emotion,
        "sentiment": sentiment,
        "dialogue_id": _int(raw, "Dialogue_ID"),
        "utterance_id": _int(raw, "Utterance_ID"),
        "season": _int(raw, "Season"),
        "episode": _int(raw, "Episode"),
        "start_s": _time(raw, "StartTime"),
        "end_s": _time(raw, "EndTime"),
    }


def _int(raw: dict[str, str], name: str) -> int:
    try:
        return int(raw[name].strip())
    except ValueError:
        raise ValueError(f"{name} {raw[name]!r} is not an integer") from None


def _time(raw: dict[str, str], name: str) -> float:
    try:
        return parse_time(raw[name])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
