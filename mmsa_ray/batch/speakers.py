"""Speakers across an archive: every file's voices -> archive-wide speaker ids, OUT/_speakers.parquet.

    speech stage, per file: its speakers (S1, S2, ... with centroids; mmsa_ray.speakers)
      ─► OUT/_speech/<key>/<file>.speakers.parquet (cached with the file's utterances)
    after a run (archive_speakers):
      every cached file speaker ─► ids already given in OUT/_speakers.parquet kept ─► the new
      ones clustered among themselves (two voices of one file never merge) and each cluster
      matched to an existing id (similarity >= archive_threshold) or given the next one ─►
      enrolled voices name the ids they match ─► OUT/_speakers.parquet, written whole, atomically

Rows keep their file-local `speaker`; `_speakers.parquet` maps (file_id, speaker) to the
archive's `speaker_id` (and `name`), so rows stay written exactly once while ids are settled
after the run. A re-run or a resumed run keeps every id already given. Its name starts with
"_" so that reading OUT as a dataset of rows (pyarrow, pandas, DuckDB, Ray Data all skip
such files) never mixes it in.


Enrolment: DIR/<name>/ holds clips of one person (any audio or video PyAV reads). Each clip's
speech (Silero VAD) is embedded; a person's voice is the mean. An archive speaker gets the name
of the enrolled voice it is most like, when at least enroll_threshold alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmsa_ray.speakers import FileSpeaker, SpeakerConfig, cluster

SPEAKERS_FILE = "_speakers.parquet"  # under OUT
FILE_SPEAKERS_SUFFIX = ".speakers.parquet"  # beside a file's cached utterances
CENTROID = pa.list_(pa.float32())
FILE_SPEAKER_SCHEMA = pa.schema([("file_id", pa.string()), ("speaker", pa.string()), ("speech_s", pa.float64()),
                                 ("centroid", CENTROID)])
SPEAKERS_SCHEMA = pa.schema([
    ("file_id", pa.string()),  # the file's id (as in the rows' file_id / id prefix)
    ("speaker", pa.string()),  # file-local: S1, S2, ... (the rows' `speaker`)
    ("speaker_id", pa.string()),  # archive-wide: spk1, spk2, ...
    ("name", pa.string()),  # the enrolled person it matches (--speakers-dir), else null
    ("speech_s", pa.float64()),  # seconds of this voice's speech in the file
    ("centroid", CENTROID),  # [256] its mean voice embedding, L2-normed
])


def file_speakers_table(file_id: str, speakers: list[FileSpeaker]) -> pa.Table:
    return pa.Table.from_pylist([{"file_id": file_id, "speaker": s.speaker, "speech_s": s.speech_s,
                                  "centroid": s.centroid.tolist()} for s in speakers], schema=FILE_SPEAKER_SCHEMA)


@dataclass
class ArchiveSpeakers:
    """What archive_speakers found: archive-wide speakers, those new this run, named ones."""
    speakers: int = 0
    new: int = 0
    files: int = 0
    named: dict[str, str] = field(default_factory=dict)  # speaker_id -> name
    path: str = ""

    def __str__(self) -> str:
        names = ", ".join(f"{i} = {n}" for i, n in sorted(self.named.items()))
        return (f"speakers: {self.speakers} across {self.files} files ({self.new} new this run"
                f"{'; ' + names if names else ''}) -> {self.path}")


def archive_speakers(out_fs: pafs.FileSystem, out_path: str, cache_path: str, config: SpeakerConfig,
                     enrolled: dict[str, np.ndarray], out_uri: str | None = None) -> ArchiveSpeakers:
    """Cluster every file speaker cached under cache_path (on out_fs) into archive-wide ids,
    name them after the `enrolled` voices ({name: [256]}, enrolled_voices) they match, and
    write OUT/_speakers.parquet (module docstring)."""
    found = _read_all(out_fs, cache_path, FILE_SPEAKERS_SUFFIX, FILE_SPEAKER_SCHEMA)
    previous = _read_previous(out_fs, f"{out_path}/{SPEAKERS_FILE}")
    given = {(r["file_id"], r["speaker"]): r["speaker_id"] for r in previous}
    rows = [dict(r) for r in found]
    known = [r for r in rows if (r["file_id"], r["speaker"]) in given]
    for r in known:
        r["speaker_id"] = given[(r["file_id"], r["speaker"])]
    fresh = [r for r in rows if (r["file_id"], r["speaker"]) not in given]
    _assign_new(fresh, known + [r for r in previous if (r["file_id"], r["speaker"]) not in
                                {(k["file_id"], k["speaker"]) for k in known}], config)
    everyone = known + fresh
    named = _name(everyone, enrolled, config.enroll_threshold)
    for r in everyone:
        r["name"] = named.get(r["speaker_id"])
    everyone.sort(key=lambda r: (r["file_id"], _number(r["speaker"])))
    tmp = f"{out_path}/.{SPEAKERS_FILE}.inprogress"
    with out_fs.open_output_stream(tmp) as f:
        pq.write_table(pa.Table.from_pylist(everyone, schema=SPEAKERS_SCHEMA), f)
    out_fs.move(tmp, f"{out_path}/{SPEAKERS_FILE}")
    return ArchiveSpeakers(speakers=len({r["speaker_id"] for r in everyone}),
                           new=len({r["speaker_id"] for r in fresh} - set(given.values())),
                           files=len({r["file_id"] for r in everyone}), named=named,
                           path=f"{out_uri or out_path}/{SPEAKERS_FILE}")


def _read_all(fs: pafs.FileSystem, directory: str, suffix: str, schema: pa.Schema) -> list[dict]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    except FileNotFoundError:
        return []
    rows = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.is_file and info.base_name.endswith(suffix) and not info.base_name.startswith("."):
            with fs.open_input_file(info.path) as f:
                rows += pq.read_table(f, schema=schema).to_pylist()
    return rows


def _read_previous(fs: pafs.FileSystem, path: str) -> list[dict]:
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    with fs.open_input_file(path) as f:
        return pq.read_table(f, schema=SPEAKERS_SCHEMA).to_pylist()


def _number(label: str) -> int:
    digits = re.sub(r"\D", "", label)
    return int(digits) if digits else 0


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _voice(rows: list[dict], speaker_id: str) -> np.ndarray:
    """An archive speaker's voice: its file centroids' mean weighted by seconds of speech, L2-normed."""
    return _unit(sum(np.asarray(r["centroid"]) * r["speech_s"] for r in rows if r["speaker_id"] == speaker_id))


def _assign_new(fresh: list[dict], known: list[dict], config: SpeakerConfig) -> None:
    """Give each fresh file speaker a speaker_id, in place: fresh ones clustered among
    themselves (never two of one file together), each cluster then matched to the most alike
    known id or given a new one."""
    if not fresh:
        return
    fresh.sort(key=lambda r: (r["file_id"], _number(r["speaker"])))
    x = _unit(np.array([r["centroid"] for r in fresh], np.float32))
    files = np.array([r["file_id"] for r in fresh])
    labels = cluster(x, config.archive_threshold, cannot_link=files[:, None] == files[None, :])
    ids = sorted({r["speaker_id"] for r in known}, key=_number)
    voices = {i: _voice(known, i) for i in ids}
    next_id = max((_number(i) for i in ids), default=0) + 1
    for lab in sorted(set(labels), key=lambda lab: np.flatnonzero(labels == lab)[0]):
        members = np.flatnonzero(labels == lab)
        weights = np.array([fresh[k]["speech_s"] for k in members])
        voice = _unit((x[members] * weights[:, None]).sum(axis=0))
        taken = {fresh[k]["file_id"] for k in members}
        best, similarity = None, config.archive_threshold
        for i, v in voices.items():  # an id that already has a speaker of one of these files cannot match
            if float(voice @ v) >= similarity and not taken & {r["file_id"] for r in known if r["speaker_id"] == i}:
                best, similarity = i, float(voice @ v)
        if best is None:
            best, next_id = f"spk{next_id}", next_id + 1
        for k in members:
            fresh[k]["speaker_id"] = best


def _name(rows: list[dict], enrolled: dict[str, np.ndarray], threshold: float) -> dict[str, str]:
    """speaker_id -> the enrolled name its voice (speech-weighted mean of its file centroids) is
    most like, when at least `threshold` alike; each name goes to its most alike id only."""
    if not enrolled:
        return {}
    ids = sorted({r["speaker_id"] for r in rows}, key=_number)
    best: dict[str, tuple[float, str]] = {}  # name -> (similarity, id)
    for i in ids:
        voice = _voice(rows, i)
        sims = {name: float(voice @ v) for name, v in enrolled.items()}
        name = max(sims, key=sims.get)
        if sims[name] >= threshold and sims[name] > best.get(name, (-1.0, ""))[0]:
            best[name] = (sims[name], i)
    return {i: name for name, (_, i) in best.items()}


def enrolled_voices(directory: str) -> dict[str, np.ndarray]:
    """DIR/<name>/<clips> -> {name: [256] voice}; ValueError naming what is wrong (no such
    folder, a person without clips, a clip without speech or that cannot be read)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from mmsa_ray.media import MediaError
    from mmsa_ray.speaker_encoder import embed_stretches
    from mmsa_ray.speech import speech_chunks

    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"--speakers-dir {directory}: not a directory")
    voices = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sums, total = np.zeros(256), 0.0
        clips = sorted(p for p in person.iterdir() if p.is_file() and not p.name.startswith("."))
        for clip in clips:
            try:
                audio = np.concatenate([a for _, a in speech_chunks(str(clip), None, None, 300.0)])
            except (MediaError, ValueError) as e:
                raise ValueError(f"--speakers-dir: {clip}: {e}") from e
            spans = [(r["start"], r["end"]) for r in get_speech_timestamps(audio, VadOptions())]
            if not spans:
                raise ValueError(f"--speakers-dir: {clip}: no speech found in it")
            seconds = sum(b - a for a, b in spans) / 16000
            sums += embed_stretches(audio, spans).mean(axis=0) * seconds
            total += seconds
        if not clips:
            raise ValueError(f"--speakers-dir: {person} holds no clips")
        voices[person.name] = _unit(sums).astype(np.float32)
    if not voices:
        raise ValueError(f"--speakers-dir {directory}: no <name>/ folders with clips in it")
    return voices
