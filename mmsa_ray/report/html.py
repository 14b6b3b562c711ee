"""`mmsa-ray report LABELS [--output DIR] [--subtitles vtt|srt]`: what a `label` run found,
as one self-contained HTML page that opens offline from disk, plus subtitle tracks.

    LABELS (Parquet, local or cloud URI) ─► rows (normalised, per source file)
      ─► summary: counts, failures grouped by cause, models, distributions, coverage
      ─► DIR/index.html: summary charts + one view per source file (timeline, transcript
         lines, player), filters and sorting, every row embedded as JSON
      ─► DIR/subtitles/<file>.vtt|srt  (--subtitles; the report's players load the VTTs)

Rows come from any `label` output: whole files, `--segment` windows or `--utterances`;
columns beyond the required ones (id, uri, start, end, emotion, ...) are optional and
shown when present (asr_confidence, no_speech_prob). A source file is a distinct `uri`.
A row without an end (a whole file) spans the file's duration, read from the media's
headers when the media is reachable, else the file's other rows or 1 s.

Charts are Vega-Lite (altair); the page inlines the Vega bundle once (timeline.py). The
page stays responsive at 10,000+ rows: charts of the archive are aggregated in Python,
file views are paginated (a few timelines at a time) and so are each file's lines.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmsa_ray import timeline
from mmsa_ray.labels import EMOTIONS, SENTIMENTS
from mmsa_ray.report import faces, speakers, subtitles
from mmsa_ray.report.summary import cause, summarize, summary_charts, top_probability
from mmsa_ray.sources import resolve

REQUIRED_COLUMNS = ("id", "uri", "start", "end", "emotion", "emotion_probs", "sentiment", "sentiment_probs", "error")
OPTIONAL_COLUMNS = ("transcript", "modalities", "text_emotion", "audio_emotion", "video_emotion", "model_id",
                    "labeled_at", "asr_confidence", "no_speech_prob", "speech", "no_label_reason",
                    "emotion_uncertain", "sentiment_uncertain", "transcript_reliable", "emotion_driver",
                    "speaker", "speaker_confidence", *faces.COLUMNS)
AUDIO_EXTENSIONS = (".m4a", ".wav", ".aif", ".aiff", ".mp3", ".ogg", ".oga", ".opus", ".flac", ".aac", ".wma", ".m4b")
_WINDOW_SUFFIX = re.compile(r"#t=[0-9.eE+-]*,[0-9.eE+-]*$")


@dataclass
class ReportConfig:
    """One report; `mmsa-ray report` flags map onto these fields."""

    labels: str  # a `label` output folder (local or cloud URI)
    output: str | None = None  # report folder; None: LABELS/_report
    subtitles: str | None = None  # "vtt" or "srt": also write one track per source file
    files_per_page: int = 5  # file views (each with a timeline) shown at once
    probe_durations: bool = True  # read whole-file rows' durations from the media headers

    def __post_init__(self) -> None:
        if self.subtitles is not None and self.subtitles not in subtitles.FORMATS:
            raise ValueError(f"subtitles must be one of {list(subtitles.FORMATS)}, got {self.subtitles!r}")
        if self.files_per_page < 1:
            raise ValueError(f"files_per_page must be >= 1, got {self.files_per_page}")

    def output_dir(self) -> str:
        if self.output:
            return self.output
        return f"{self.labels.rstrip('/')}/_report" if "://" in self.labels else os.path.join(self.labels, "_report")


@dataclass
class Report:
    """What was written. Paths are in the output's filesystem."""

    index: str
    rows: int
    files: int
    failed: int
    tracks: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"report of {self.rows} rows from {self.files} files ({self.failed} failed): {self.index}"]
        if self.tracks:
            lines.append(f"  {len(self.tracks)} subtitle tracks in {os.path.dirname(self.tracks[0])}")
        local = "://" not in self.index
        lines.append(f"  open it: {Path(self.index).as_uri() if local else self.index}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading


def read_rows(labels: str) -> list[dict[str, Any]]:
    """The rows of a `label` output (Parquet files in LABELS; '_' and '.' names skipped),
    as dicts of the known columns present. ValueError when a required column is missing
    or there are no rows; FileNotFoundError when LABELS does not exist."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    fs, path = resolve(labels)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{labels}: no such label output")
    # Only the Parquet files: a report written into LABELS (index.html, subtitles/) or any
    # other file there is not data. Names starting with '_' or '.' are bookkeeping.
    files = sorted(
        i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        and not any(part.startswith(("_", ".")) for part in i.path[len(path):].strip("/").split("/"))
    )
    if not files:
        raise ValueError(f"{labels}: no Parquet files in it (is it a `label` output?)")
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    names = set(dataset.schema.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{labels}: not a `label` output: columns {missing} missing (has {sorted(names)})")
    columns = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in names]
    rows: list[dict[str, Any]] = []
    for batch in dataset.to_batches(columns=columns):
        rows += batch.to_pylist()
    if not rows:
        raise ValueError(f"{labels}: no labeled rows in it")
    return rows


def file_name(row_id: str) -> str:
    """A row id -> the id of its source file: the window suffix `#t=a,b` removed."""
    return _WINDOW_SUFFIX.sub("", row_id)


def media_url(uri: str, report_dir: str | None) -> str | None:
    """Where the report's player finds the media: an http(s) URL as is; a local file as a
    path relative to a local report folder (or a file:// URL); None when unreachable
    from a browser (cloud URIs, missing files)."""
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("file://"):
        uri = urllib.parse.unquote(uri[len("file://"):])
    elif "://" in uri or not uri:
        return None
    if not os.path.isfile(uri):
        return None
    if report_dir is not None:
        try:
            return urllib.parse.quote(os.path.relpath(uri, report_dir).replace(os.sep, "/"))
        except ValueError:  # another drive
            pass
    return "file://" + urllib.parse.quote(os.path.abspath(uri))


def _duration(uri: str) -> float | None:
    from mmsa_ray.media import DecodeConfig, MediaError, probe_duration

    path = urllib.parse.unquote(uri[7:]) if uri.startswith("file://") else uri
    if "://" in path or not os.path.isfile(path):
        return None
    try:
        return probe_duration(path, DecodeConfig(timeout_s=10.0))
    except MediaError:
        return None


def build_model(raw: list[dict[str, Any]], report_dir: str | None, probe: bool = True,
                archive: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """Label rows -> {"files": [...], "rows": [...]} as the page reads them.

    files: {k, name, uri, media (URL; null when unreachable or every row failed), kind ("video"|"audio"),
            duration, rows, failed, track}
    rows:  {i, f (file index), id, t0, t1, emotion, ec, sentiment, sc, ep, sp, modalities,
            text_emotion, audio_emotion, video_emotion, transcript, error, [asr, no_speech, speech,
            who, spc]}; t0/t1 seconds; ec/sc the top probabilities; emotion/sentiment "failed" on
            errors; who: the speaker (report.speakers.who, with `archive`), spc its confidence.
    Files are sorted by name, rows by (file, t0, t1, id)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in raw:
        groups[r.get("uri") or r["id"]].append(r)
    names = {uri: min(file_name(r["id"]) for r in rs) for uri, rs in groups.items()}
    files, rows = [], []
    for k, uri in enumerate(sorted(groups, key=lambda u: (names[u], u))):
        rs = groups[uri]
        duration = _duration(uri) if probe and any(r.get("end") is None for r in rs) else None
        known_ends = [r["end"] for r in rs if r.get("end") is not None]
        fallback_end = duration or (max(known_ends) if known_ends else None)
        file_rows = sorted((_page_row(r, fallback_end, archive or {}) for r in rs),
                           key=lambda x: (x["t0"], x["t1"], x["id"]))
        for row in file_rows:
            row["i"], row["f"] = len(rows), k
            rows.append(row)
        files.append(_page_file(k, names[uri], uri, file_rows, duration, report_dir))
    return {"files": files, "rows": rows}


def _page_row(r: dict[str, Any], fallback_end: float | None, archive: dict[tuple[str, str], str]) -> dict[str, Any]:
    """One label row -> its page row (build_model; without i and f). A row without an end
    spans to `fallback_end` (the file's duration or its last known end) when that lies
    past its start, else 1 s."""
    t0 = float(r.get("start") or 0.0)
    t1 = r.get("end")
    if t1 is None:
        t1 = fallback_end if fallback_end and fallback_end > t0 else t0 + 1.0
    error = r.get("error")
    unlabeled = timeline.FAILED if error else None if r.get("emotion") else timeline.NO_SIGNAL
    row = {
        "id": r["id"], "t0": round(t0, 3), "t1": round(max(float(t1), t0 + 0.001), 3),
        "emotion": unlabeled or r.get("emotion"),
        "ec": None if error else _round(top_probability(r.get("emotion_probs"))),
        "sentiment": unlabeled or r.get("sentiment"),
        "sc": None if error else _round(top_probability(r.get("sentiment_probs"))),
        "ep": None if error else [_round(p) for p in r.get("emotion_probs") or []],
        "sp": None if error else [_round(p) for p in r.get("sentiment_probs") or []],
        "modalities": list(r.get("modalities") or []),
        "text_emotion": r.get("text_emotion"), "audio_emotion": r.get("audio_emotion"),
        "video_emotion": r.get("video_emotion"), "driver": r.get("emotion_driver"),
        "transcript": r.get("transcript"),
        "error": cause(error, r.get("uri") or "") if error else None,
        "no_label_reason": None if error else r.get("no_label_reason"),
        "eu": r.get("emotion_uncertain"), "su": r.get("sentiment_uncertain"),
    }
    if r.get("asr_confidence") is not None:
        row["asr"] = _round(r["asr_confidence"])
    if r.get("no_speech_prob") is not None:
        row["no_speech"] = _round(r["no_speech_prob"])
    if r.get("speech") in ("none", "unrecognized"):  # no speech in this file / speech without words here
        row["speech"] = r["speech"]
    if r.get("transcript_reliable") is False:  # kept for the reader, not read by the model
        row["unreliable"] = True
    if r.get("speaker"):
        row["who"] = speakers.who(r, file_name(r["id"]), archive)
        row["spc"] = _round(r.get("speaker_confidence"))
    if r.get("face_count") is not None:  # faces were read: how many, and the main face's expression
        row["faces"], row["face"], row["fused"] = r["face_count"], r.get("face_emotion"), r.get("fused_emotion")
        # each track's thumbnail, main face first (a JPEG of about 1.5 KB; rows written before them have none)
        thumbs = [t["thumbnail"] for t in r.get("faces") or () if t.get("thumbnail")]
        if thumbs:
            row["thumbs"] = thumbs
    return row


def _page_file(k: int, name: str, uri: str, file_rows: list[dict[str, Any]], duration: float | None,
               report_dir: str | None) -> dict[str, Any]:
    """One source file's entry in build_model's "files" (its track is set later, if any)."""
    ext = os.path.splitext(urllib.parse.urlparse(uri).path if "://" in uri else uri)[1].lower()
    failed = sum(1 for x in file_rows if x["error"])
    # no player for a file that failed as a whole: a browser cannot play it either
    return {
        "k": k, "name": name, "uri": uri, "media": media_url(uri, report_dir) if failed < len(file_rows) else None,
        "kind": "audio" if ext in AUDIO_EXTENSIONS else "video",
        "duration": None if duration is None else round(duration, 3),
        "rows": len(file_rows), "failed": failed, "track": None,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 3)


# ----------------------------------------------------------------------------- tracks


def cues_by_file(model: dict[str, Any]) -> dict[int, list[subtitles.Cue]]:
    """One cue per labeled row, and a "[no signal: why]" cue per row without a signal (failed
    rows have nothing to show), per file index."""
    out: dict[int, list[subtitles.Cue]] = defaultdict(list)
    for r in model["rows"]:
        if r["error"]:
            continue
        if r["emotion"] == timeline.NO_SIGNAL:
            text = subtitles.no_signal_text(r.get("no_label_reason"), r["transcript"])
        else:
            text = subtitles.cue_text(r["emotion"], r["ec"], r["sentiment"], r["transcript"])
        out[r["f"]].append(subtitles.Cue(r["t0"], r["t1"], text, r.get("who")))
    return out


# ----------------------------------------------------------------------------- HTML


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def render_html(labels: str, s: dict[str, Any], model: dict[str, Any], charts: dict[str, dict],
                files_per_page: int) -> str:
    """The whole page: summary (static HTML + charts), file views (built by web/report.js
    from the embedded rows), data and scripts inlined."""
    data = {**model, "files_per_page": files_per_page, "emotions": list(EMOTIONS), "sentiments": list(SENTIMENTS)}
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""{timeline.page_head(f"mmsa-ray report: {labels}")}
<body>
<header>
<h1>Emotion and sentiment report</h1>
<p class="sub"><code>{_e(labels)}</code>{_e(_labeled_when(s))} · report made {generated}</p>
</header>
<main>
{_summary_section(s, charts)}
{_files_section()}
</main>
{timeline.json_script("mmsa-data", data)}
{timeline.json_script("mmsa-charts", charts)}
{timeline.timeline_scripts()}
<script>{timeline.web_asset("report.js")}</script>
</body>
</html>
"""


def _labeled_when(s: dict[str, Any]) -> str:
    """' · labeled <first> to <last>' (one time when both fall in the same minute); '' when
    the rows carry no labeled_at."""
    if not s["labeled_at"]:
        return ""
    a, b = (t.strftime("%Y-%m-%d %H:%M UTC") for t in s["labeled_at"])
    return f" · labeled {a}" + (f" to {b}" if b != a else "")


def _summary_section(s: dict[str, Any], charts: dict[str, dict]) -> str:
    """The summary: number cards, modality coverage, one slot per chart (drawn from the
    embedded specs), the models table and the failures."""
    cards = [("rows", s["rows"]), ("source files", s["files"]), ("labeled", s["labeled"]),
             ("no signal (no label)", s["no_signal"]), ("uncertain", s["uncertain"]), ("failed", s["failed"]),
             ("speech unrecognized", f"{s['unrecognized']} ({s['unrecognized_s']:.0f} s)"),
             ("mean emotion confidence", _fmt(s["mean_emotion_confidence"])),
             ("mean sentiment confidence", _fmt(s["mean_sentiment_confidence"]))]
    cards_html = "".join(f'<div class="card"><div class="num">{_e(v)}</div><div>{_e(k)}</div></div>' for k, v in cards)
    coverage = " · ".join(f"{m}: {n} rows" for m, n in s["modalities"].items())
    models = "".join(f"<tr><td><code>{_e(m)}</code></td><td>{n}</td></tr>" for m, n in s["models"])
    chart_divs = "".join(f'<div class="chart" id="{k}"></div>' for k in charts)
    return f"""<section id="summary">
<div class="cards">{cards_html}</div>
<p class="coverage">Modality coverage of labeled rows: {_e(coverage)}</p>
<div class="charts">{chart_divs}</div>
<div class="columns">
<div><h2>Models</h2><table id="models" class="grid"><thead><tr><th>model_id</th><th>rows</th></tr></thead>\
<tbody>{models}</tbody></table></div>
<div><h2>Failures</h2>{_failures_html(s["failures"])}</div>
</div>
{speakers.speaker_table_html(s.get("speakers") or [])}
{faces.face_summary_html(s.get("faces"))}
</section>"""


def _failures_html(failures: list[tuple[str, int, list[str]]]) -> str:
    """The failures table (cause, rows, example ids; summarize's order), or a line saying
    that every row was labeled."""
    if not failures:
        return '<p id="failures">No failures: every row was labeled.</p>'
    body = "".join(f'<tr><td class="cause">{_e(c)}</td><td class="count">{n}</td><td>'
                   + "<br>".join(f"<code>{_e(i)}</code>" for i in ids) + "</td></tr>" for c, n, ids in failures)
    return ('<table id="failures" class="grid"><thead><tr><th>cause</th><th>rows</th><th>examples</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _files_section() -> str:
    """The frame of the file views: controls, match count, pagers; web/report.js fills it
    from the embedded rows."""
    return f"""<section id="files-section">
<h2>Files</h2>
{_filters_form()}
<p id="match-count" aria-live="polite"></p>
<nav class="pager" id="files-pager"></nav>
<div id="files"></div>
<nav class="pager" id="files-pager-bottom"></nav>
<noscript><p>The file views and charts need JavaScript (inlined in this file; nothing is fetched).</p></noscript>
</section>"""


def _options(*choices: tuple[str, str]) -> str:
    """<option> elements of (value, text) pairs (both plain, no escaping needed)."""
    return "".join(f'<option value="{value}">{text}</option>' for value, text in choices)


def _filters_form() -> str:
    """The controls web/report.js reads by id: filters (emotion, sentiment, confidence,
    file, text), the orders of files and of lines, and reset."""
    emotions = _options(("", "any"), *((e, e) for e in EMOTIONS), (timeline.NO_SIGNAL, timeline.NO_SIGNAL),
                        ("failed", "failed"))
    sentiments = _options(("", "any"), *((x, x) for x in SENTIMENTS))
    file_orders = _options(("name", "name"), ("rows", "most rows"), ("failed", "most failures"),
                           ("conf", "lowest confidence"))
    line_orders = _options(("time", "time"), ("conf-desc", "confidence, high first"),
                           ("conf-asc", "confidence, low first"), ("emotion", "emotion"))
    return f"""<form id="filters" onsubmit="return false">
<label>emotion <select id="f-emotion">{emotions}</select></label>
<label>sentiment <select id="f-sentiment">{sentiments}</select></label>
<label>confidence ≥ <input id="f-conf" type="range" min="0" max="1" step="0.05" value="0"> \
<output id="f-conf-value">0.00</output></label>
<label>file <select id="f-file"><option value="">all files</option></select></label>
<label>speaker <select id="f-speaker"><option value="">anyone</option></select></label>
<label>text <input id="f-text" type="search" placeholder="transcript or id"></label>
<label><input id="f-uncertain" type="checkbox"> hide uncertain</label>
<label>files by <select id="f-sort-files">{file_orders}</select></label>
<label>lines by <select id="f-sort-rows">{line_orders}</select></label>
<button id="f-reset" type="button">reset</button>
</form>"""


# ----------------------------------------------------------------------------- run


def make_report(config: ReportConfig) -> Report:
    """Read LABELS, write DIR/index.html (and DIR/subtitles/* with config.subtitles)."""
    t0 = time.time()
    raw = read_rows(config.labels)
    out = config.output_dir()
    out_fs, out_path = resolve(out)
    local_dir = out_path if "://" not in out else None
    model = build_model(raw, local_dir, probe=config.probe_durations, archive=speakers.read_archive(config.labels))
    s = summarize(raw)
    s["speakers"] = speakers.speaker_table(model["rows"])
    s["faces"] = faces.face_summary(raw)
    out_fs.create_dir(out_path, recursive=True)
    tracks = []
    if config.subtitles:
        out_fs.create_dir(f"{out_path}/subtitles", recursive=True)
        cues = cues_by_file(model)
        used: set[str] = set()
        for f in model["files"]:
            name = subtitles.track_name(f["name"], config.subtitles)
            while name in used:  # two sources that flatten to one name
                name = name.replace(f".{config.subtitles}", f"-{f['k']}.{config.subtitles}")
            used.add(name)
            path = f"{out_path}/subtitles/{name}"
            _write(out_fs, path, subtitles.render(cues.get(f["k"], []), config.subtitles))
            tracks.append(path)
        if config.subtitles == "vtt":
            # Inlined as data: URLs: browsers refuse <track> files next to a page opened
            # from disk (file: URLs are each their own origin), data: URLs they load.
            for f in model["files"]:
                text = subtitles.to_webvtt(cues.get(f["k"], []))
                f["track"] = "data:text/vtt;charset=utf-8," + urllib.parse.quote(text)
    page = render_html(config.labels, s, model, summary_charts(s), config.files_per_page)
    index = f"{out_path}/index.html"
    _write(out_fs, index, page)
    return Report(index=index if local_dir is None else os.path.join(local_dir, "index.html"), rows=s["rows"],
                  files=s["files"], failed=s["failed"], tracks=tracks, seconds=time.time() - t0)


def _write(fs, path: str, text: str) -> None:
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def parse_args(argv: list[str] | None = None) -> ReportConfig:
    d = ReportConfig(labels="")
    p = argparse.ArgumentParser(
        prog="mmsa-ray report",
        description="Write an offline HTML report (summary, per-file emotion/sentiment timelines with a player, "
        "filters) of a `label` output, and optionally subtitle tracks of the labels.",
    )
    p.add_argument("labels", help="a `label` output folder (local path or cloud URI)")
    p.add_argument("--output", default=None, help="report folder (local or cloud URI); default LABELS/_report")
    p.add_argument("--subtitles", choices=subtitles.FORMATS, default=None,
                   help="also write one subtitle track per source file to OUTPUT/subtitles "
                   "(cues '[joy 0.82 · positive] transcript'); vtt tracks are also shown by the report's players")
    p.add_argument("--files-per-page", type=int, default=d.files_per_page,
                   help=f"file views (each with its timeline) per page (default {d.files_per_page})")
    p.add_argument("--no-probe", dest="probe_durations", action="store_false",
                   help="do not read whole-file durations from the media headers (faster on slow storage)")
    a = p.parse_args(argv)
    try:
        return ReportConfig(labels=a.labels, output=a.output, subtitles=a.subtitles, files_per_page=a.files_per_page,
                            probe_durations=a.probe_durations)
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    print(make_report(config), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
