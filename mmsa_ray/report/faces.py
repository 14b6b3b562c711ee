"""Faces in the report: how many rows with video show a face, what the faces show, and how
often the face and the text disagree (mmsa_ray.faces; `label --faces on`, the default).

Disagreement is counted on rows that have both opinions: a `text_emotion` (the text
modality's own head) and a `face_emotion` (the main face's expression). No fused weight is
claimed validated: the table says so beside the numbers.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

# what the report reads of label's face columns (faces: each track's thumbnail)
COLUMNS = ("faces", "face_count", "face_emotion", "fused_emotion", "face_error")


def face_summary(raw: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{read, with_face, face_emotions, both, disagree, pairs, fused}: rows whose faces were read
    (face_count not null), those with a face, the main faces' emotions, rows with both a text and
    a face emotion, how many of those disagree and the commonest (text, face) disagreements,
    rows with a fused emotion; None when no row had its faces read."""
    read = [r for r in raw if r.get("face_count") is not None]
    if not read:
        return None
    both = [r for r in read if r.get("face_emotion") and r.get("text_emotion")]
    differ = [r for r in both if r["face_emotion"] != r["text_emotion"]]
    return {"read": len(read), "with_face": sum(1 for r in read if r["face_count"]),
            "face_emotions": Counter(r["face_emotion"] for r in read if r.get("face_emotion")),
            "both": len(both), "disagree": len(differ),
            "pairs": Counter((r["text_emotion"], r["face_emotion"]) for r in differ).most_common(5),
            "fused": sum(1 for r in raw if r.get("fused_emotion"))}


def face_summary_html(s: dict[str, Any] | None) -> str:
    """The summary's "Faces" paragraph and table (empty string when no faces were read)."""
    if not s:
        return ""
    shares = ", ".join(f"{e} {n}" for e, n in s["face_emotions"].most_common())
    agree = (f"face and text disagree on {s['disagree']} of {s['both']} rows that have both "
             f"({100 * s['disagree'] / s['both']:.0f}%)" if s["both"] else "no row has both a face and a text emotion")
    pairs = "".join(f"<tr><td>{html.escape(text)}</td><td>{html.escape(face)}</td><td>{n}</td></tr>"
                    for (text, face), n in s["pairs"])
    table = ('<table id="face-disagreements" class="grid"><thead><tr><th>text says</th><th>face says</th><th>rows</th>'
             f"</tr></thead><tbody>{pairs}</tbody></table>") if pairs else ""
    fused = (f" {s['fused']} rows carry a fused emotion (--fuse); its weights are the user's, not validated."
             if s["fused"] else "")
    return (f'<h3>Faces</h3><p id="face-summary">A face was found in {s["with_face"]} of {s["read"]} rows with '
            f"video; main faces: {html.escape(shares) or 'none'}. {html.escape(agree)}.{html.escape(fused)} The face's "
            "expression (FER-2013) is its own opinion beside the label, never fused into it.</p>" + table)
