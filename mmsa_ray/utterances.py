"""The utterances stage: recognized words -> utterances, and utterances -> table rows.

    words (file time, from mmsa_ray.speech) ─► split at pauses >= pause_s ─► short pieces
      merged into a neighbour ─► long ones split at their largest pause ─► Utterance
      ─► utterance_rows (one row each: id, times, transcript, words, scores, speech,
         transcript_reliable)

What the model may read of a row (`model_transcript`) and why a row has no label
(`no_speech_reason`) are decided here too, so that label and serve agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from mmsa_ray import transcript_checks

_SENTENCE_END = (".", "?", "!")
_SENTENCE_BONUS_S = 0.3  # when splitting a long utterance, a gap after a sentence end counts this much longer


class UtteranceRules(Protocol):
    """Where utterances split and merge (speech.SpeechConfig has these fields), seconds."""

    pause_s: float
    min_utterance_s: float
    max_utterance_s: float


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
    speech: str = "found"  # "found" | "unrecognized": VAD speech in which Whisper found no words (text "")
    speaker: str | None = None  # file-local "S1", "S2", ... (mmsa_ray.speakers); None: speakers off
    speaker_confidence: float | None = None  # 0..1, how clearly the voice is that speaker's


@dataclass
class TimedWord:
    """A word with its Whisper segment's scores and raw text (leading space kept)."""
    start: float
    end: float
    raw: str
    probability: float
    avg_logprob: float
    no_speech_prob: float
    speaker: str | None = None  # mmsa_ray.speakers.VoiceTrack.label_words
    speaker_confidence: float | None = None


def build_utterances(words: Iterable[TimedWord], config: UtteranceRules) -> list[Utterance]:
    """Words (file time, in order) -> utterances: split where the gap between two words is
    >= pause_s and wherever the speaker changes; pieces shorter than min_utterance_s merged
    into the neighbour (of the same speaker) across the smaller gap; pieces longer than
    max_utterance_s split at their largest gap (a gap after a sentence end counts
    _SENTENCE_BONUS_S more), keeping both sides >= min_utterance_s where possible, until
    none is too long."""
    words = sorted(words, key=lambda w: w.start)
    if not words:
        return []
    pieces: list[list[TimedWord]] = [[words[0]]]
    for prev, w in itertools.pairwise(words):
        if w.start - prev.end >= config.pause_s or w.speaker != prev.speaker:
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
        same = lambda i, j: 0 <= j < len(pieces) and pieces[i][0].speaker == pieces[j][0].speaker  # noqa: E731
        short = [i for i, p in enumerate(pieces) if _duration(p) < min_s and (same(i, i - 1) or same(i, i + 1))]
        if not short:
            break
        i = min(short, key=lambda i: _duration(pieces[i]))
        gap_before = pieces[i][0].start - pieces[i - 1][-1].end if same(i, i - 1) else math.inf
        gap_after = pieces[i + 1][0].start - pieces[i][-1].end if same(i, i + 1) else math.inf
        j = i - 1 if gap_before <= gap_after else i + 1
        a, b = min(i, j), max(i, j)
        pieces[a:b + 1] = [pieces[a] + pieces[b]]
    return pieces


def _split_long(piece: list[TimedWord], config: UtteranceRules) -> list[list[TimedWord]]:
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
    scored = [w for w in piece if w.speaker_confidence is not None]
    return Utterance(
        start=piece[0].start, end=piece[-1].end,
        text="".join(w.raw for w in piece).strip(),
        words=[Word(w.start, w.end, w.raw.strip(), w.probability) for w in piece],
        avg_logprob=float(np.mean([w.avg_logprob for w in piece])),
        no_speech_prob=float(np.mean([w.no_speech_prob for w in piece])),
        speaker=piece[0].speaker,
        speaker_confidence=float(np.average([w.speaker_confidence for w in scored],
                                            weights=[w.end - w.start + 0.01 for w in scored])) if scored else None,
    )


def utterance_rows(file_id: str, utterances: list[Utterance]) -> list[dict[str, Any]]:
    """-> table rows, one per utterance: id = f"{file_id}#t={start:.3f},{end:.3f}" (W3C
    media-fragment syntax, as sources._window_id; milliseconds, so ids of a long file stay
    distinct), start, end (seconds, rounded to the ms as in the id), transcript, words
    (list of {start, end, word, probability}), asr_confidence (exp(avg_logprob), 0..1),
    no_speech_prob, speech ("found" | "unrecognized": no transcript, words or scores),
    transcript_reliable (asr_confidence >= transcript_checks.MIN_CONFIDENCE; null when
    unrecognized), speaker and speaker_confidence (null when speakers are off)."""
    rows = []
    for u in utterances:
        start, end = round(u.start, 3), round(u.end, 3)
        found = u.speech == "found"
        confidence = float(math.exp(u.avg_logprob))
        rows.append({
            "id": f"{file_id}#t={start:.3f},{end:.3f}",
            "start": start,
            "end": end,
            "transcript": u.text if found else None,
            "words": [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.word,
                       "probability": float(w.probability)} for w in u.words],
            "asr_confidence": confidence if found else None,
            "no_speech_prob": float(u.no_speech_prob) if found else None,
            "speech": u.speech,
            "transcript_reliable": transcript_checks.reliable(confidence) if found else None,
            "speaker": u.speaker,
            "speaker_confidence": None if u.speaker_confidence is None else round(u.speaker_confidence, 4),
        })
    return rows


SAME_SPEAKER, OTHER_SPEAKER = "[same]", "[other]"  # context markers: never names, which label and serve lack


def marked_context(text: str, speaker: str | None, current: str | None) -> str:
    """A context utterance as a checkpoint with FeatureConfig.context_speakers reads it:
    "[same] text" when `speaker` is the current utterance's, "[other] text" when not, the
    text alone when either is unknown."""
    if speaker is None or current is None:
        return text
    return f"{SAME_SPEAKER if speaker == current else OTHER_SPEAKER} {text}"


def model_transcript(row: dict[str, Any]) -> str | None:
    """The transcript the model may read from a row: its transcript, unless the speech stage
    flagged it unreliable (transcript_reliable false)."""
    return None if row.get("transcript_reliable") is False else row.get("transcript")


def no_speech_reason(reason: str | None, row: dict[str, Any]) -> str | None:
    """A Predictor's no_label_reason made specific with what the speech stage found: "no
    transcript" becomes "no speech" (none heard), "speech not recognized" (VAD speech without
    words) or "transcript unreliable" (below transcript_checks.MIN_CONFIDENCE)."""
    if reason != "no transcript":
        return reason
    if row.get("transcript_reliable") is False:
        return "transcript unreliable"
    return {"none": "no speech", "unrecognized": "speech not recognized"}.get(row.get("speech"), reason)
