"""The speakers stage: who speaks when in a file, and the same person across an archive.

    per chunk of audio (from mmsa_ray.speech, with its words):
      words ─► voice stretches (runs of words split at gaps >= turn_gap_s, at most
      max_stretch_s long; speech without words too) ─► speaker_encoder embeddings [256]
    per file (VoiceTrack.finish):
      stretches >= min_stretch_s ─► agglomerative clustering (average linkage, cosine),
      merging while clusters are at least `threshold` alike (or into num_speakers) ─►
      shorter stretches join their nearest speaker ─► S1, S2, ... in order of first speech
      ─► each word gets its stretch's speaker, so utterances split at every change of speaker
    per archive (cluster_archive): every file's speakers (centroids) clustered again into
      archive-wide speaker ids; enrolled voices (a folder of clips per person) name them.

A speaker can change only between two words at least turn_gap_s apart, or at a stretch
boundary inside a long run (every max_stretch_s): a turn taken without any pause, inside a
run, is found to within one stretch. Overlapping speech gets the voice that dominates.

speaker_confidence (0..1) is how clearly a stretch's voice is its speaker's:
sigmoid((similarity to its speaker - max(similarity to the next nearest, threshold)) / 0.05);
above 0.5 it is nearer its own speaker than any other and than the threshold.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from dataclasses import dataclass, field

import numpy as np

from mmsa_ray.utterances import TimedWord

SAMPLE_RATE = 16000  # Hz
_CONFIDENCE_SCALE = 0.05  # similarity difference that moves speaker_confidence from 0.5 to 0.73
_NOISE_QUANTILE = 0.1  # each stretch's background (this quantile of each mel band) is taken out before embedding


@dataclass
class SpeakerConfig:
    enabled: bool = True  # off: no speaker column, utterances split at pauses only
    num_speakers: int | None = None  # known number of speakers per file (None: estimated)
    min_speakers: int = 1
    max_speakers: int = 8
    # cosine similarity of Resemblyzer embeddings of 1.5-3 s stretches: clusters merge while their average
    # similarity is at least this (one voice's stretches 0.71-0.93 alike, averaging 0.85; different voices 0.66-0.68)
    threshold: float = 0.72
    turn_gap_s: float = 0.15  # a speaker may change between two words at least this far apart
    min_stretch_s: float = 1.5  # shorter ones (under one 1.6 s partial) join the nearest speaker, not shaping them
    max_stretch_s: float = 3.0  # longer runs of words are embedded in pieces of about this length
    # file speakers' centroids: the same voice in two files 0.90-0.97 alike, different voices <= 0.76
    archive_threshold: float = 0.82  # two files' speakers whose centroids are this alike are one person
    enroll_threshold: float = 0.82  # an archive speaker this alike to an enrolled voice gets its name
    enroll_dir: str | None = None  # DIR/<name>/<clips>: voices to name (batch runs; see mmsa_ray.batch.speakers)

    def __post_init__(self) -> None:
        if not 1 <= self.min_speakers <= self.max_speakers:
            raise ValueError(f"need 1 <= min_speakers <= max_speakers, got {self.min_speakers}, {self.max_speakers}")
        if self.num_speakers is not None and self.num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {self.num_speakers}")
        for name in ("threshold", "archive_threshold", "enroll_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"SpeakerConfig.{name} is a cosine similarity in (0, 1), got {getattr(self, name)}")
        if not 0 < self.min_stretch_s <= self.max_stretch_s or self.turn_gap_s <= 0:
            raise ValueError("need turn_gap_s > 0 and 0 < min_stretch_s <= max_stretch_s")
        if self.enroll_dir is not None and not os.path.isdir(self.enroll_dir):
            raise ValueError(f"--speakers-dir {self.enroll_dir}: not a directory (it holds a folder of clips per "
                             "person: DIR/<name>/*.wav)")

    def key(self) -> dict:
        """What changes a file's speakers (the archive thresholds do not): for cache keys."""
        return {k: getattr(self, k) for k in ("enabled", "num_speakers", "min_speakers", "max_speakers",
                                              "threshold", "turn_gap_s", "min_stretch_s", "max_stretch_s")}


@dataclass
class Stretch:
    start: float  # seconds in the file's time
    end: float
    embedding: np.ndarray  # [256] float32, L2-normed
    speaker: str | None = None  # "S1", ... once the file is finished
    confidence: float | None = None


@dataclass
class FileSpeaker:
    """One voice of a file: its local name, seconds of speech and centroid ([256], L2-normed)."""
    speaker: str
    speech_s: float
    centroid: np.ndarray


@dataclass
class VoiceTrack:
    """The voices of one file, collected chunk by chunk while speech is recognized (add), then
    clustered (finish) and given to words (label_words). One per file; not thread-safe."""

    config: SpeakerConfig = field(default_factory=SpeakerConfig)
    stretches: list[Stretch] = field(default_factory=list)
    speakers: list[FileSpeaker] = field(default_factory=list)

    def add(self, offset: float, audio: np.ndarray, words: list[TimedWord],
            unrecognized: list[tuple[float, float]]) -> None:
        """audio float32 [N] 16 kHz starting `offset` s into the file; its words and its
        stretches of speech without words, in file time."""
        from mmsa_ray.speaker_encoder import embed_stretches

        spans = voice_stretches([(w.start, w.end) for w in words], self.config)
        for a, b in unrecognized:
            spans += _pieces(a, b, self.config.max_stretch_s)
        spans = [(a, b) for a, b in spans if b - a >= 0.1]
        to_sample = lambda t: int(np.clip(round((t - offset) * SAMPLE_RATE), 0, len(audio)))  # noqa: E731
        samples = [(to_sample(a), to_sample(b)) for a, b in spans]
        keep = [k for k, (i, j) in enumerate(samples) if j - i >= 0.1 * SAMPLE_RATE]
        embeddings = embed_stretches(audio, [samples[k] for k in keep], floor_quantile=_NOISE_QUANTILE)
        self.stretches += [Stretch(spans[k][0], spans[k][1], e) for k, e in zip(keep, embeddings, strict=True)]

    def finish(self) -> list[FileSpeaker]:
        """Cluster the stretches into speakers (module docstring); -> the file's speakers."""
        c = self.config
        self.stretches.sort(key=lambda s: s.start)
        if not self.stretches:
            return []
        x = np.stack([s.embedding for s in self.stretches])
        durations = np.array([s.end - s.start for s in self.stretches])
        voting = durations >= c.min_stretch_s
        if not voting.any():
            voting[:] = True
        labels = np.full(len(x), -1)
        labels[voting] = cluster(x[voting], c.threshold, c.num_speakers, c.min_speakers, c.max_speakers)
        centroids = _centroids(x[voting], labels[voting], durations[voting])
        sims = x @ centroids.T  # [stretches, speakers]
        labels[~voting] = sims[~voting].argmax(axis=1)
        order = {}  # cluster -> S<n> in order of first speech
        for lab in labels:
            order.setdefault(int(lab), f"S{len(order) + 1}")
        for s, lab, row in zip(self.stretches, labels, sims, strict=True):
            s.speaker = order[int(lab)]
            s.confidence = speaker_confidence(row, int(lab), c.threshold)
        final = _centroids(x, labels, durations)
        self.speakers = [FileSpeaker(order[lab], float(durations[labels == lab].sum()), final[lab])
                         for lab in sorted(order, key=lambda lab: order[lab])]
        return self.speakers

    def label_words(self, words: list[TimedWord]) -> None:
        """Give each word (file time) the speaker and confidence of the stretch that holds its
        middle (else the nearest stretch), in place; finish() first."""
        for w in words if self.stretches else ():
            s = self._nearest((w.start + w.end) / 2)
            w.speaker, w.speaker_confidence = s.speaker, s.confidence

    def _nearest(self, t: float) -> Stretch:
        """The stretch holding time t (seconds), else the nearest one (the first of a tie)."""
        return min(self.stretches, key=lambda s: max(0.0, s.start - t, t - s.end))

    def speaker_of(self, start: float, end: float) -> tuple[str | None, float | None]:
        """The speaker (and confidence) of [start, end): the one whose stretches overlap it
        most (the nearest stretch's when none does); (None, None) without stretches."""
        if not self.stretches:
            return None, None
        overlap: dict[str, float] = {}
        for s in self.stretches:
            o = min(end, s.end) - max(start, s.start)
            if o > 0:
                overlap[s.speaker] = overlap.get(s.speaker, 0.0) + o
        if not overlap:
            s = self._nearest((start + end) / 2)
            return s.speaker, s.confidence
        best = max(overlap, key=overlap.get)
        inside = [s for s in self.stretches if s.speaker == best and min(end, s.end) > max(start, s.start)]
        return best, float(np.mean([s.confidence for s in inside]))


def voice_stretches(words: list[tuple[float, float]], config: SpeakerConfig) -> list[tuple[float, float]]:
    """Word times (seconds, in order) -> stretches of one voice each: runs of words split at
    gaps >= turn_gap_s; a run longer than max_stretch_s cut between words into n =
    ceil(length / max_stretch_s) pieces of about equal length."""
    runs: list[list[tuple[float, float]]] = []
    for w in words:
        if runs and w[0] - runs[-1][-1][1] < config.turn_gap_s:
            runs[-1].append(w)
        else:
            runs.append([w])
    out = []
    for run in runs:
        a, b = run[0][0], run[-1][1]
        n = math.ceil((b - a) / config.max_stretch_s - 1e-9)
        ends = [w[1] for w in run[:-1]]
        cuts = sorted({min(range(len(ends)), key=lambda i: abs(ends[i] - (a + (b - a) * k / n)))
                       for k in range(1, n)}) if ends else []
        edges = [0, *(i + 1 for i in cuts), len(run)]
        out += [(run[i][0], run[j - 1][1]) for i, j in itertools.pairwise(edges)]
    return out


def _pieces(a: float, b: float, length: float) -> list[tuple[float, float]]:
    n = max(1, math.ceil((b - a) / length - 1e-9))
    return [(a + (b - a) * k / n, a + (b - a) * (k + 1) / n) for k in range(n)]




def _centroids(x: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[n, 256] embeddings, cluster labels 0..k-1, weights [n] -> [k, 256] L2-normed weighted means."""
    k = int(labels.max()) + 1
    c = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(c, labels, x * weights[:, None])
    return (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def cluster(x: np.ndarray, threshold: float, n: int | None = None, lo: int = 1, hi: int = 10**9,
            cannot_link: np.ndarray | None = None) -> np.ndarray:
    """Embeddings [m, 256] (L2-normed) -> cluster labels [m] (0.. in no particular order):
    average-linkage agglomerative clustering on cosine distance, into n clusters when given,
    else merging while two clusters' average similarity is >= threshold, the count then held
    within [lo, hi] (and <= m). cannot_link [m, m] bool: pairs that must stay apart (their
    distance is made 10, so no average over them reaches the threshold)."""
    from sklearn.cluster import AgglomerativeClustering

    m = len(x)
    if m == 1:
        return np.zeros(1, int)
    distance = np.clip(1.0 - x.astype(np.float64) @ x.T.astype(np.float64), 0.0, 2.0)
    if cannot_link is not None:
        distance[cannot_link & ~np.eye(m, dtype=bool)] = 10.0
    np.fill_diagonal(distance, 0.0)

    def fit(**kwargs):
        return AgglomerativeClustering(metric="precomputed", linkage="average", **kwargs).fit(distance)

    if n is None:
        n = min(max(fit(n_clusters=None, distance_threshold=1.0 - threshold).n_clusters_, lo), hi)
    return fit(n_clusters=min(n, m)).labels_


def speaker_confidence(similarities: np.ndarray, own: int, threshold: float) -> float:
    """similarities [k] of a stretch to each speaker's centroid -> 0..1 (module docstring)."""
    others = np.delete(similarities, own)
    rival = max(float(others.max()) if len(others) else -1.0, threshold)
    return float(1.0 / (1.0 + math.exp(-(float(similarities[own]) - rival) / _CONFIDENCE_SCALE)))


def add_speaker_args(parser: argparse.ArgumentParser) -> None:
    """--speakers, --num-speakers, --min-speakers, --max-speakers, --speaker-threshold."""
    d = SpeakerConfig()
    g = parser.add_argument_group("speakers (who speaks when; with utterances)")
    g.add_argument("--speakers", choices=("on", "off"), default="on" if d.enabled else "off",
                   help="find who speaks when: utterances split at every change of speaker and rows carry "
                        "`speaker` (default: %(default)s)")
    g.add_argument("--num-speakers", type=int, default=d.num_speakers,
                   help="the number of speakers in each file, when known (default: estimated)")
    g.add_argument("--min-speakers", type=int, default=d.min_speakers, help="at least this many per file")
    g.add_argument("--max-speakers", type=int, default=d.max_speakers, help="at most this many per file")
    g.add_argument("--speaker-threshold", type=float, default=d.threshold,
                   help="voice similarity (cosine, 0..1) at which stretches are one speaker; higher finds more "
                        "speakers (default: %(default)s)")
    g.add_argument("--speakers-dir", default=d.enroll_dir, metavar="DIR",
                   help="enrolment: DIR/<name>/ holds clips of that person (any audio or video); archive speakers "
                        f"whose voice matches (similarity >= {d.enroll_threshold:g}) get the name")


def speaker_config_from_args(args: argparse.Namespace) -> SpeakerConfig:
    return SpeakerConfig(enabled=args.speakers == "on", num_speakers=args.num_speakers,
                         min_speakers=args.min_speakers, max_speakers=args.max_speakers,
                         threshold=args.speaker_threshold, enroll_dir=args.speakers_dir)
