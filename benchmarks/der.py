"""Diarization error rate, as NIST's md-eval scores it: frames of 10 ms, a collar around every
reference boundary left unscored, overlapping speech scored, hypothesis speakers mapped one to
one onto reference speakers so that the most time agrees (Hungarian assignment).

    DER = (missed + false alarm + confusion) / reference speech, all in speaker-seconds

Per scored frame with r reference and h hypothesis speakers, c of them mapped onto each other:
missed max(0, r - h), false alarm max(0, h - r), confusion min(r, h) - c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_S = 0.01

Turn = tuple[float, float, str]  # (start s, end s, speaker)


@dataclass
class DiarizationError:
    reference_s: float  # scored reference speech, speaker-seconds
    missed_s: float
    false_alarm_s: float
    confusion_s: float

    @property
    def rate(self) -> float:
        return (self.missed_s + self.false_alarm_s + self.confusion_s) / self.reference_s if self.reference_s else 0.0


def _activity(turns: list[Turn], n: int) -> tuple[list[str], np.ndarray]:
    speakers = sorted({s for _, _, s in turns})
    active = np.zeros((len(speakers), n), bool)
    for a, b, s in turns:
        active[speakers.index(s), round(a / FRAME_S):round(b / FRAME_S)] = True
    return speakers, active


def diarization_error(reference: list[Turn], hypothesis: list[Turn], collar_s: float = 0.25) -> DiarizationError:
    """Turns [(start, end, speaker)] in seconds -> the error (module docstring). collar_s on
    each side of every reference turn's start and end is not scored."""
    from scipy.optimize import linear_sum_assignment

    end = max([b for _, b, _ in reference + hypothesis], default=0.0)
    n = round(end / FRAME_S) + 1
    _, ref = _activity(reference, n)
    _, hyp = _activity(hypothesis, n)
    scored = np.ones(n, bool)
    c = round(collar_s / FRAME_S)
    for a, b, _ in reference:
        for edge in (round(a / FRAME_S), round(b / FRAME_S)):
            scored[max(0, edge - c):edge + c] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    agree = ref.astype(np.int64) @ hyp.T.astype(np.int64)  # [ref speakers, hyp speakers] frames both active
    rows, cols = linear_sum_assignment(-agree) if agree.size else ([], [])
    mapped = np.zeros(ref.shape[1], np.int64)
    for i, j in zip(rows, cols, strict=True):
        mapped += ref[i] & hyp[j]
    r, h = ref.sum(axis=0), hyp.sum(axis=0)
    return DiarizationError(reference_s=float(r.sum()) * FRAME_S,
                            missed_s=float(np.maximum(0, r - h).sum()) * FRAME_S,
                            false_alarm_s=float(np.maximum(0, h - r).sum()) * FRAME_S,
                            confusion_s=float((np.minimum(r, h) - mapped).sum()) * FRAME_S)
