"""What the speech stage checks before it trusts Whisper: invented segments, stretches of
speech left without words, and transcripts too doubtful to label.

Whisper, decoding greedily at temperature 0 (the speech stage never samples; see
mmsa_ray.speech), can fall into a loop ("a little bit of a little bit of ...") on speech it
cannot read, most often speech in another language through an English-only model, and can
write stock phrases ("Thank you very much for watching") over noise. Three checks:

- `invented(segment)`: a segment whose gzip compression ratio is past Whisper's own
  threshold (COMPRESSION_RATIO_MAX = 2.4, as faster-whisper) or whose words loop (a run of
  words said three times or more in a row, twelve words or more in all) is dropped.
  (Segments Whisper itself calls silence, no-speech probability > 0.6 with mean
  log-probability < -1, faster-whisper already drops.)
- `uncovered(speech, words, min_gap_s)`: the stretches of VAD speech at least min_gap_s
  long that no word covers: the speech stage transcribes each again on its own, and what is
  still empty becomes an "unrecognized" utterance, so no speech is lost without a row.
- `MIN_CONFIDENCE`: an utterance whose asr_confidence (exp of its mean token
  log-probability) is below it keeps its transcript with transcript_reliable = false, and
  the model does not read it.

How MIN_CONFIDENCE = 0.45 was chosen (Whisper tiny.en int8, the default model, temperature 0,
VAD on): English sentences from six espeak-ng voices (en, en-us, en-gb, en-sc, en+f3,
en-us+m4) scored 0.64 to 0.78; the same kind of sentences in French, German, Spanish and
Italian scored 0.32 to 0.38 where Whisper did not loop (its loops, 0.70 to 0.77, the
compression check drops). 0.45 lies below every English voice with a margin for recorded
speech in noise and above every other language; Whisper's own log-probability threshold
(-1.0) is 0.37. With an English-only model this is also the language check: speech in another
language comes out as a loop (dropped, then "unrecognized") or below 0.45 (unreliable).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

COMPRESSION_RATIO_MAX = 2.4  # Whisper's (and faster-whisper's) threshold for a repetitive segment
# a loop: a run of at most LOOP_NGRAM_MAX words said LOOP_REPEATS or more times in a row, LOOP_MIN_WORDS
# words in all ("no, no, no, no" is speech; "a little bit of" three times over is Whisper stuck)
LOOP_REPEATS = 3
LOOP_NGRAM_MAX = 12
LOOP_MIN_WORDS = 12
MIN_CONFIDENCE = 0.45  # asr_confidence below this: transcript_reliable = false (module docstring)
WORD_PAD_S = 0.5  # a word covers this much speech either side of its own times (VAD pads speech by 0.4 s)


def invented(compression_ratio: float, words: Sequence[str]) -> str | None:
    """Why a Whisper segment is an invention ("repetition loop", "compression ratio 3.1 > 2.4"),
    or None when it is not. words: the segment's words, as Whisper wrote them."""
    if compression_ratio > COMPRESSION_RATIO_MAX:
        return f"compression ratio {compression_ratio:.1f} > {COMPRESSION_RATIO_MAX}"
    if loop_words(words) >= LOOP_MIN_WORDS:
        return "repetition loop"
    return None


def loop_words(words: Sequence[str]) -> int:
    """The most words that one run of 1..LOOP_NGRAM_MAX words, following itself at least
    LOOP_REPEATS times in a row, spans in `words`, compared without case and punctuation
    ("a little bit of a little bit of a little bit of" -> 12); 0 when none repeats so."""
    tokens = [t for t in (re.sub(r"[^\w']", "", w.lower()) for w in words) if t]
    best = 0
    for n in range(1, LOOP_NGRAM_MAX + 1):
        for i in range(len(tokens) - LOOP_REPEATS * n + 1):
            count = 1
            while tokens[i + count * n:i + (count + 1) * n] == tokens[i:i + n]:
                count += 1
            if count >= LOOP_REPEATS:
                best = max(best, count * n)
    return best


def uncovered(speech: Iterable[tuple[float, float]], words: Iterable[tuple[float, float]],
              min_gap_s: float) -> list[tuple[float, float]]:
    """Stretches of `speech` (VAD regions, (start, end) seconds) that no word covers, each word
    widened by WORD_PAD_S either side; only those at least min_gap_s long, in time order."""
    covered = sorted((a - WORD_PAD_S, b + WORD_PAD_S) for a, b in words)
    gaps = []
    for start, end in sorted(speech):
        t = start
        for a, b in covered:
            if b <= t:
                continue
            if a >= end:
                break
            if a - t >= min_gap_s:
                gaps.append((t, a))
            t = max(t, b)
        if end - t >= min_gap_s:
            gaps.append((t, end))
    return gaps


def reliable(asr_confidence: float) -> bool:
    """Whether a transcript is good enough for the model to read (module docstring)."""
    return asr_confidence >= MIN_CONFIDENCE
