"""Subtitle tracks of labeled rows: WebVTT (W3C) and SubRip (.srt), one track per source file.

Each cue is a row's time span (seconds in the file's time) and the text
`[joy 0.82 · positive] I can't believe it!`: the top emotion, its probability, the top
sentiment, then the transcript (if any); with speakers, WebVTT wraps it in a voice span
`<v S1>...` and SRT starts it with `S1: `. Any player that reads subtitles then shows the
labels over the video.

Format details players rely on:
    WebVTT  "WEBVTT" header line, a blank line, then cues: optional id line, timing line
            `HH:MM:SS.mmm --> HH:MM:SS.mmm`, text lines, a blank line. Text escapes &, <, >
            (WebVTT cue text is markup); no blank line and no "-->" inside a cue.
    SRT     cues numbered from 1, timing `HH:MM:SS,mmm --> HH:MM:SS,mmm`, text, blank line.
Cues are sorted by start (then end), each lasts at least 1 ms (players drop empty cues),
hours may exceed 99 (two digits at least).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMATS = ("vtt", "srt")
MIN_CUE_S = 0.001


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float  # seconds, > start
    text: str  # plain text (escaped when written)
    speaker: str | None = None  # who says it: a WebVTT voice span <v S1>, an "S1: " prefix in SRT


def cue_text(emotion: str, emotion_confidence: float | None, sentiment: str | None, transcript: str | None) -> str:
    """`[joy 0.82 · positive] I can't believe it!` (confidence: probability in [0, 1])."""
    conf = "" if emotion_confidence is None else f" {emotion_confidence:.2f}"
    label = f"[{emotion}{conf}" + (f" · {sentiment}]" if sentiment else "]")
    words = " ".join((transcript or "").split())  # one line: transcripts may hold newlines
    return f"{label} {words}" if words else label


def no_signal_text(reason: str | None, transcript: str | None) -> str:
    """`[no signal: no speech]` for a row with no label (nothing of the model's to read)."""
    words = " ".join((transcript or "").split())
    label = f"[no signal: {reason or 'nothing to read'}]"
    return f"{label} {words}" if words else label


def timestamp(seconds: float, decimal: str = ".") -> str:
    """Seconds -> HH:MM:SS.mmm (WebVTT) or HH:MM:SS,mmm (decimal=',', SRT); rounded to 1 ms."""
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _ordered(cues: list[Cue]) -> list[Cue]:
    out = []
    for c in sorted(cues, key=lambda c: (c.start, c.end)):
        start = max(0.0, c.start)
        # at least 1 ms after rounding: a cue whose end equals its start is never shown
        end = max(c.end, start + MIN_CUE_S)
        if round(end * 1000) <= round(start * 1000):
            end = (round(start * 1000) + 1) / 1000
        out.append(Cue(start, end, c.text, c.speaker))
    return out


def _clean(text: str) -> str:
    # A blank line ends a cue and "-->" would read as a timing line: neither may appear.
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    return "\n".join(line for line in lines if line).replace("-->", "->")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_webvtt(cues: list[Cue]) -> str:
    """The WebVTT file text of `cues` (any order in, sorted out)."""
    parts = ["WEBVTT", ""]
    for n, c in enumerate(_ordered(cues), 1):
        text = _vtt_escape(_clean(c.text)) or "…"
        if c.speaker:  # the voice span: players show (or style) who speaks
            text = f"<v {_vtt_escape(' '.join(c.speaker.split()))}>{text}"
        parts += [str(n), f"{timestamp(c.start)} --> {timestamp(c.end)}", text, ""]
    return "\n".join(parts)


def to_srt(cues: list[Cue]) -> str:
    """The SubRip file text of `cues` (any order in, sorted out). SRT has no escaping; '<'
    is kept, as players read <i>/<b> tags and show anything else as text."""
    parts = []
    for n, c in enumerate(_ordered(cues), 1):
        text = _clean(c.text) or "…"
        if c.speaker:
            text = f"{' '.join(c.speaker.split())}: {text}"
        parts += [str(n), f"{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}", text, ""]
    return "\n".join(parts)


def render(cues: list[Cue], fmt: str) -> str:
    """`fmt` is "vtt" or "srt"."""
    if fmt == "vtt":
        return to_webvtt(cues)
    if fmt == "srt":
        return to_srt(cues)
    raise ValueError(f"subtitle format must be one of {list(FORMATS)}, got {fmt!r}")


def track_name(file_name: str, fmt: str) -> str:
    """A file name for the track of source `file_name` (its id: a relative path or a URI):
    '/' becomes '__', characters outside [A-Za-z0-9._-] become '_'."""
    name = re.sub(r"^[a-z][a-z0-9+.-]*://", "", file_name).strip("/").replace("/", "__")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "track"
    return f"{name[:180]}.{fmt}"
