"""Who spoke, in the report: each row's speaker as people should read it, and each archive
speaker's emotions and sentiments.

A row's `speaker` is file-local (S1, S2, ...); the label run's OUT/_speakers.parquet
(mmsa_ray.batch.speakers) maps (file id, speaker) to the archive's speaker_id and, for
enrolled voices, a name. The report shows the name, else the speaker_id, else the local
speaker (an output written without the archive table).
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from typing import Any

from mmsa_ray.labels import EMOTIONS, SENTIMENTS

ARCHIVE_FILE = "_speakers.parquet"  # as mmsa_ray.batch.speakers.SPEAKERS_FILE: the report reads any label output


def read_archive(labels: str) -> dict[tuple[str, str], str]:
    """(file id, local speaker) -> what to call that voice (name, else speaker_id), from
    LABELS/_speakers.parquet; {} when there is none."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from mmsa_ray.sources import resolve

    fs, path = resolve(labels)
    table_path = f"{path.rstrip('/')}/{ARCHIVE_FILE}"
    if fs.get_file_info(table_path).type != pafs.FileType.File:
        return {}
    with fs.open_input_file(table_path) as f:
        rows = pq.read_table(f, columns=["file_id", "speaker", "speaker_id", "name"]).to_pylist()
    return {(r["file_id"], r["speaker"]): r["name"] or r["speaker_id"] for r in rows}


def who(row: dict[str, Any], file_id: str, archive: dict[tuple[str, str], str]) -> str | None:
    """The speaker to show for a row (module docstring); None when it has none."""
    local = row.get("speaker")
    if not local:
        return None
    return archive.get((file_id, local), local)


def speaker_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Page rows (with "who", t0, t1, emotion, sentiment) -> one entry per speaker, most
    speech first: {who, seconds, rows, labeled, emotions: {class: share of its labeled rows},
    sentiments: {...}}."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("who"):
            groups[r["who"]].append(r)
    table = []
    for name, rs in groups.items():
        labeled = [r for r in rs if r["emotion"] in EMOTIONS]
        emotions, sentiments = Counter(r["emotion"] for r in labeled), Counter(r["sentiment"] for r in labeled)
        n = max(1, len(labeled))
        table.append({"who": name, "seconds": round(sum(r["t1"] - r["t0"] for r in rs), 1), "rows": len(rs),
                      "labeled": len(labeled),
                      "emotions": {c: round(emotions[c] / n, 3) for c in EMOTIONS if emotions[c]},
                      "sentiments": {c: round(sentiments[c] / n, 3) for c in SENTIMENTS if sentiments[c]}})
    return sorted(table, key=lambda t: (-t["seconds"], t["who"]))


def speaker_table_html(table: list[dict[str, Any]]) -> str:
    """The summary's "speakers" table (empty string without speakers)."""
    if not table:
        return ""

    def shares(d: dict[str, float]) -> str:
        return ", ".join(f"{c} {100 * p:.0f}%" for c, p in sorted(d.items(), key=lambda x: -x[1]))

    body = "".join(
        f"<tr><td>{html.escape(t['who'])}</td><td>{t['seconds']:.1f}</td><td>{t['rows']}</td>"
        f"<td>{html.escape(shares(t['emotions']))}</td><td>{html.escape(shares(t['sentiments']))}</td></tr>"
        for t in table)
    return ('<h3>Speakers</h3><table id="speakers"><thead><tr><th>speaker</th><th>speech s</th><th>rows</th>'
            f"<th>emotions (of labeled rows)</th><th>sentiments</th></tr></thead><tbody>{body}</tbody></table>")
