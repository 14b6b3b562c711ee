"""report: the offline HTML report and the subtitle tracks of a real `label` output (one
label run per module, on media made here), then the report in headless Chromium."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import browser
import mediagen
import pyarrow.dataset as pads
import pytest

from mmsa_ray.labels import EMOTIONS, SENTIMENTS
from mmsa_ray.report import html as report
from mmsa_ray.report import subtitles
from mmsa_ray.report.summary import summarize

MARKUP = "<b>bold</b> & more --> yes"
TRANSCRIPTS = {(0.0, 2.0): "I can't believe it!", (2.0, 4.0): MARKUP, (4.0, 6.0): None}


@pytest.fixture(scope="module")
def labels_out(tmp_path_factory, ray_local, tiny_checkpoint) -> Path:
    """`label` over a manifest: a 6 s clip in three windows with transcripts, a whole
    A+V clip, a whole wav, and two files that fail (text bytes, empty)."""
    from mmsa_ray.batch.label import LabelConfig, label

    d = tmp_path_factory.mktemp("report")
    media = d / "media"
    media.mkdir()
    mediagen.write_video(media / "long.mp4", 6.0, 160, 120, 15, audio=(44100, 1, "aac"))
    clips = mediagen.clips(media)
    (media / "broken.mp4").write_bytes(b"this is not a video\n" * 50)
    (media / "empty.mp4").write_bytes(b"")
    lines = ["path,id,transcript,start,end"]
    for (s, e), t in TRANSCRIPTS.items():
        lines.append(f'long.mp4,,{json.dumps(t) if t else ""},{s},{e}')
    lines += [f'{clips["av"].name},av.mp4,"I am so happy!",,', f'{clips["audio_only"].name},tone.wav,,,',
              "broken.mp4,broken.mp4,,,", "empty.mp4,empty.mp4,,,"]
    (media / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = d / "labels"
    summary = label(LabelConfig(input=str(media / "manifest.csv"), checkpoint=str(tiny_checkpoint), output=str(out),
                                batch_size=4, decode_batch_size=2, rows_per_file=4))
    assert (summary.labeled, summary.failed) == (5, 2), str(summary)
    return out


@pytest.fixture(scope="module")
def rows(labels_out) -> list[dict]:
    return pads.dataset(str(labels_out), format="parquet").to_table().to_pylist()


class _Page(HTMLParser):
    """Tags by id, the failures table's cells, the embedded JSON scripts; fails on a
    closing tag that does not match the open one (void elements aside)."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "source", "track", "wbr", "col", "area", "base", "embed"}
    OPTIONAL_CLOSE = {"p", "li", "option", "tr", "td", "th", "thead", "tbody"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: dict[str, str] = {}
        self.scripts: dict[str, str] = {}
        self.failure_rows: list[list[str]] = []
        self._script_id: str | None = None
        self._in_failures = False
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            if a["id"] in self.ids:
                self.errors.append(f"duplicate id {a['id']}")
            self.ids[a["id"]] = tag
        if tag == "table" and a.get("id") == "failures":
            self._in_failures = True
        if self._in_failures and tag == "tr":
            self._row = []
        if self._in_failures and tag == "td":
            self._cell = []
        if tag == "script":
            self._script_id = a.get("id", "")
            self.scripts.setdefault(self._script_id, "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self.stack and self.stack[-1] != tag and self.stack[-1] in self.OPTIONAL_CLOSE:
            self.stack.pop()
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            if self._row:
                self.failure_rows.append(self._row)
            self._row = None
        if tag == "table":
            self._in_failures = False
        if tag == "script":
            self._script_id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._script_id is not None:
            self.scripts[self._script_id] += data


@pytest.fixture(scope="module")
def made(labels_out, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    assert report.main([str(labels_out), "--output", str(out / "html"), "--subtitles", "vtt"]) == 0
    assert report.main([str(labels_out), "--output", str(out / "srt"), "--subtitles", "srt"]) == 0
    return out


@pytest.fixture(scope="module")
def page(made) -> _Page:
    p = _Page()
    p.text = (made / "html" / "index.html").read_text(encoding="utf-8")
    p.feed(p.text)
    p.close()
    return p


# ----------------------------------------------------------------------------- the HTML


@pytest.mark.slow
def test_html_parses_and_names_every_source_file(page, rows):
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    for needed in ("summary", "filters", "files", "failures", "models", "mmsa-data", "mmsa-charts",
                   "mmsa-timeline-spec"):
        assert needed in page.ids, needed
    data = json.loads(page.scripts["mmsa-data"])
    names = {f["name"] for f in data["files"]}
    assert len(names) == 5 and {"av.mp4", "tone.wav", "broken.mp4", "empty.mp4"} < names
    assert any(n.endswith("long.mp4") for n in names)
    assert {f["uri"] for f in data["files"]} == {r["uri"] for r in rows}
    # The Vega bundle is inlined and nothing is fetched from elsewhere.
    assert "window.vegaEmbed=" in page.scripts[""]
    assert not re.search(r'<script[^>]+src=|<link[^>]+href="(?!data:)', page.text)


@pytest.mark.slow
def test_one_timeline_mark_per_row(page, rows):
    data = json.loads(page.scripts["mmsa-data"])
    spec = json.loads(page.scripts["mmsa-timeline-spec"])
    # the timeline: two strips of rect marks, each over the rows the page fills in
    assert spec["data"] == {"name": "rows"}
    strips = [(v["mark"]["type"], v["encoding"]["x"]["field"], v["encoding"]["x2"]["field"]) for v in spec["vconcat"]]
    assert strips == [("rect", "t0", "t1")] * 2
    assert len(data["rows"]) == len(rows)
    per_file = Counter(r["f"] for r in data["rows"])
    by_uri = Counter(r["uri"] for r in rows)
    for f in data["files"]:
        assert per_file[f["k"]] == by_uri[f["uri"]] == f["rows"], f["name"]
    long_rows = [r for r in data["rows"] if data["files"][r["f"]]["name"].endswith("long.mp4")]
    assert [(r["t0"], r["t1"]) for r in long_rows] == [(0, 2), (2, 4), (4, 6)]
    assert [r["transcript"] for r in long_rows] == list(TRANSCRIPTS.values())
    by_id = {r["id"]: r for r in rows}
    for r in data["rows"]:
        src = by_id[r["id"]]
        if src["error"]:
            assert r["emotion"] == r["sentiment"] == "failed" and r["error"]
        else:
            assert r["emotion"] == src["emotion"] in EMOTIONS and r["sentiment"] == src["sentiment"] in SENTIMENTS
            assert r["ec"] == pytest.approx(max(src["emotion_probs"]), abs=1e-3)
            assert r["text_emotion"] == src["text_emotion"]
            assert r["driver"] == src["emotion_driver"] in src["modalities"]
    # whole files span their duration, read from the media: the 2 s clip and the 1 s wav
    spans = {data["files"][r["f"]]["name"]: (r["t0"], r["t1"]) for r in data["rows"]}
    assert (spans["av.mp4"] == (0, pytest.approx(2.0, abs=0.1))
            and spans["tone.wav"] == (0, pytest.approx(1.0, abs=0.05)))


@pytest.mark.slow
def test_failures_table_lists_each_error_rows_cause(page, rows):
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 2
    want = Counter(r["error"][len(r["uri"]) + 2:] for r in errors)
    got = {cause: int(count) for cause, count, _ in page.failure_rows}
    assert got == dict(want)
    assert any("empty" in c for c in got)
    examples = " ".join(ex for _, _, ex in page.failure_rows)
    assert "broken.mp4" in examples and "empty.mp4" in examples


@pytest.mark.slow
def test_summary_numbers(rows):
    s = summarize(rows)
    assert (s["rows"], s["files"], s["labeled"], s["failed"]) == (7, 5, 5, 2)
    assert sum(s["emotions"].values()) == 5 and sum(s["sentiments"].values()) == 5
    # audio in all 5 labeled rows, video in the 4 mp4 rows, text in the 3 with a transcript
    assert s["modalities"] == {"text": 3, "audio": 5, "video": 4}
    assert 0 < s["mean_emotion_confidence"] <= 1
    assert [m for m, _ in s["models"]] == [rows[0]["model_id"]]


# ----------------------------------------------------------------------------- subtitles

VTT_TIMING = re.compile(r"^(\d{2,}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2,}):(\d{2}):(\d{2})\.(\d{3})$")


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    """A strict reading of the WebVTT structure we write: header, blank line, then blocks
    of [id] timing text... separated by one blank line."""
    assert text.startswith("WEBVTT\n\n") or text == "WEBVTT\n", text[:40]
    cues = []
    for block in [b.strip("\n") for b in text.split("\n\n")[1:] if b.strip()]:
        lines = block.split("\n")
        if not VTT_TIMING.match(lines[0]):
            lines = lines[1:]  # the cue id
        m = VTT_TIMING.match(lines[0])
        assert m, block
        g = [int(x) for x in m.groups()]
        start, end = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        body = "\n".join(lines[1:])
        assert body and "-->" not in body and not re.search(r"<(?!/?[biucv]\b)", body), body
        cues.append((start, end, body))
    return cues


def test_rows_without_a_signal_are_shown_as_such_never_as_a_class(tmp_path):
    """A row with no label (no_label_reason) is 'no signal' on the page, counted apart in the
    summary, and its cue says why; it is neither labeled nor failed."""
    base = {"uri": "/m/a.wav", "start": 0.0, "end": 1.0, "emotion_probs": [0.1] * 6 + [0.4],
            "sentiment_probs": [0.2, 0.2, 0.6], "modalities": ["text"], "transcript": "wow", "error": None,
            "model_id": "m"}
    raw = [{**base, "id": "a#t=0,1", "emotion": "surprise", "sentiment": "positive"},
           {**base, "id": "a#t=1,2", "start": 1.0, "end": 2.0, "emotion": None, "sentiment": None,
            "emotion_probs": None, "sentiment_probs": None, "modalities": [], "transcript": None,
            "no_label_reason": "no speech"},
           {**base, "id": "a#t=2,3", "start": 2.0, "end": 3.0, "emotion": None, "sentiment": None,
            "emotion_probs": None, "sentiment_probs": None, "error": "/m/a.wav: corrupt"},
           {**base, "id": "a#t=3,6.5", "start": 3.0, "end": 6.5, "emotion": None, "sentiment": None,
            "emotion_probs": None, "sentiment_probs": None, "modalities": [], "transcript": None,
            "speech": "unrecognized", "no_label_reason": "speech not recognized"}]
    s = summarize(raw)
    assert (s["labeled"], s["no_signal"], s["failed"]) == (1, 2, 1)
    assert (s["unrecognized"], s["unrecognized_s"]) == (1, 3.5)
    assert s["no_signal_reasons"] == [("no speech", 1), ("speech not recognized", 1)]
    assert sum(s["emotions"].values()) == 1
    model = report.build_model(raw, str(tmp_path), probe=False)
    assert [(r["emotion"], r["sentiment"], r["no_label_reason"]) for r in model["rows"]] == [
        ("surprise", "positive", None), ("no signal", "no signal", "no speech"), ("failed", "failed", None),
        ("no signal", "no signal", "speech not recognized")]
    assert model["rows"][3]["speech"] == "unrecognized"
    cues = report.cues_by_file(model)[0]
    assert [c.text for c in cues] == ["[surprise 0.40 · positive] wow", "[no signal: no speech]",
                                      "[no signal: speech not recognized]"]
    assert subtitles.no_signal_text(None, "hm") == "[no signal: nothing to read] hm"


def test_cue_text_and_timestamps():
    assert (subtitles.cue_text("joy", 0.8234, "positive", "I can't\nbelieve it!")
            == "[joy 0.82 · positive] I can't believe it!")
    assert subtitles.cue_text("anger", 0.5, "negative", None) == "[anger 0.50 · negative]"
    assert subtitles.timestamp(3725.5) == "01:02:05.500" and subtitles.timestamp(0.0004, ",") == "00:00:00,000"
    assert subtitles.timestamp(400 * 3600 + 0.0126) == "400:00:00.013"
    cues = [subtitles.Cue(2.0, 3.0, "b <i> & c"), subtitles.Cue(0.0, 0.0, "a")]
    vtt = subtitles.to_webvtt(cues)
    assert parse_vtt(vtt) == [(0.0, 0.001, "a"), (2.0, 3.0, "b &lt;i&gt; &amp; c")]
    assert subtitles.track_name("s3://bucket/a b/c.mp4", "vtt") == "bucket__a_b__c.mp4.vtt"
    with pytest.raises(ValueError, match="subtitle format"):
        subtitles.render(cues, "ass")


@pytest.mark.slow
def test_webvtt_tracks_parse_one_cue_per_labeled_row(made, rows):
    tracks = {p.name: p.read_text(encoding="utf-8") for p in (made / "html" / "subtitles").glob("*.vtt")}
    assert len(tracks) == 5
    for name, text in tracks.items():
        cues = parse_vtt(text)
        source = next(r for r in rows if subtitles.track_name(report.file_name(r["id"]), "vtt") == name)
        labeled = sorted((r for r in rows if r["uri"] == source["uri"] and not r["error"]),
                         key=lambda r: r["start"] or 0)
        assert len(cues) == len(labeled), name
        assert [c[0] for c in cues] == sorted(c[0] for c in cues) and all(c[1] > c[0] for c in cues)
        for (start, _end, body), r in zip(cues, labeled, strict=True):
            assert start == pytest.approx(r["start"] or 0.0, abs=1e-3)
            assert body.startswith(f"[{r['emotion']} {max(r['emotion_probs']):.2f} · {r['sentiment']}]"), body
    long_cues = parse_vtt(next(t for n, t in tracks.items() if n.endswith("long.mp4.vtt")))
    assert [(c[0], c[1]) for c in long_cues] == [(0, 2), (2, 4), (4, 6)]
    assert long_cues[0][2].endswith("] I can't believe it!")
    assert long_cues[1][2].endswith("] &lt;b&gt;bold&lt;/b&gt; &amp; more -&gt; yes")
    assert parse_vtt(next(t for n, t in tracks.items() if n.startswith("broken"))) == []


@pytest.mark.slow
def test_srt_tracks_parse_one_cue_per_labeled_row(made, rows):
    import srt

    tracks = {p.name: p.read_text(encoding="utf-8") for p in (made / "srt" / "subtitles").glob("*.srt")}
    assert len(tracks) == 5
    total = 0
    for text in tracks.values():
        cues = list(srt.parse(text, ignore_errors=False))
        assert [c.index for c in cues] == list(range(1, len(cues) + 1))
        assert all(c.end > c.start for c in cues) and [c.start for c in cues] == sorted(c.start for c in cues)
        assert all(re.match(r"^\[\w+ \d\.\d\d · \w+\]", c.content) for c in cues)
        total += len(cues)
    assert total == sum(1 for r in rows if not r["error"])
    long = list(srt.parse(next(t for n, t in tracks.items() if n.endswith("long.mp4.srt"))))
    assert [(c.start.total_seconds(), c.end.total_seconds()) for c in long] == [(0, 2), (2, 4), (4, 6)]
    assert long[1].content.endswith("] <b>bold</b> & more -> yes")


def test_missing_or_foreign_labels_are_clear_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(FileNotFoundError, match="no such label output"):
        report.read_rows(str(tmp_path / "nowhere"))
    pq.write_table(pa.table({"id": ["a"], "x": [1]}), tmp_path / "part.parquet")
    with pytest.raises(ValueError, match=r"not a `label` output: columns \['uri'"):
        report.read_rows(str(tmp_path))


# ----------------------------------------------------------------------------- in Chromium


@pytest.mark.slow
def test_report_in_headless_chromium(made, page, rows, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    index = made / "html" / "index.html"
    with browser.chrome() as d:
        d.get(index.as_uri())
        browser.wait(d, "window.mmsaReportReady && document.querySelectorAll('.timeline svg').length === 5",
                     what="timelines")
        assert d.execute_async_script("const done = arguments[0]; "
                                      "window.mmsaReportReady.then(() => done(true), e => done(String(e)))") is True
        # summary charts drawn: 7 emotion bars, 3 sentiment bars
        assert len(d.find_elements(By.CSS_SELECTOR, "#chart-emotions svg g.mark-rect path")) == 7
        assert len(d.find_elements(By.CSS_SELECTOR, "#chart-sentiments svg g.mark-rect path")) == 3
        sections = {s.get_attribute("data-file"): s for s in d.find_elements(By.CSS_SELECTOR, "section.file")}
        n_rows = {f["name"]: f["rows"] for f in json.loads(page.scripts["mmsa-data"])["files"]}
        assert set(sections) == set(n_rows)
        faced = Counter(report.file_name(r["id"]) for r in rows if r["face_count"] is not None)  # video rows
        for name, s in sections.items():
            strips = s.find_elements(By.CSS_SELECTOR, ".timeline svg g.mark-rect")
            lanes = ([faced[name]] if faced[name] else []) + [n_rows[name]] * 2  # a face lane over video files
            assert [len(g.find_elements(By.TAG_NAME, "path")) for g in strips] == lanes, name
        long = next(s for name, s in sections.items() if name.endswith("long.mp4"))
        video = long.find_element(By.TAG_NAME, "video")
        player = f"document.getElementById('{long.get_attribute('id')}').querySelector('video')"
        browser.wait(d, "Array.from(document.querySelectorAll('video, audio')).every(v => v.readyState >= 1)",
                     what="media metadata")
        # the player's own WebVTT parser reads our track: one cue per row, the escaped markup shown as text
        cues = browser.wait(d, "(t => t && t.cues && t.cues.length ? Array.from(t.cues)"
                            ".map(c => [c.startTime, c.endTime, c.getCueAsHTML().textContent])"
                            f" : null)({player}.textTracks[0])", what="the subtitle track")
        assert [c[:2] for c in cues] == [[0, 2], [2, 4], [4, 6]] and cues[1][2].endswith("<b>bold</b> & more -> yes")
        # a transcript line seeks the player to its row
        long.find_element(By.CSS_SELECTOR, 'ol.lines li[data-t0="2"]').click()
        assert d.execute_script("return arguments[0].currentTime", video) == pytest.approx(2.0, abs=0.05)
        assert "selected" in long.find_element(By.CSS_SELECTOR, 'ol.lines li[data-t0="2"]').get_attribute("class")
        # a timeline mark too: the third emotion mark (4 s to 6 s), under the face lane
        mark = long.find_elements(By.CSS_SELECTOR, ".timeline svg g.mark-rect")[1].find_elements(By.TAG_NAME, "path")[2]
        ActionChains(d).move_to_element(mark).click().perform()
        browser.wait(d, f"Math.abs({player}.currentTime - 4) < 0.05", timeout=10, what="the mark click to seek")
        drivers = [e.text for e in d.find_elements(By.CSS_SELECTOR, "ol.lines li .driver")]
        assert sorted(drivers) == sorted(f"from {r['emotion_driver']}" for r in rows if r["emotion_driver"])
        # faces were read in every video row (label's default) and none has a face: each line says so
        faces = [e.text for e in d.find_elements(By.CSS_SELECTOR, "ol.lines li .face")]
        assert faces == ["no face"] * sum(r["face_count"] == 0 for r in rows) and len(faces) == 4
        browser.screenshot(d, tmp_path, "report.png")
        # filters: only the failed rows -> the two failing files
        Select(d.find_element(By.ID, "f-emotion")).select_by_value("failed")
        browser.wait(d, "document.querySelectorAll('section.file').length === 2", timeout=10, what="the filter")
        shown = {s.get_attribute("data-file") for s in d.find_elements(By.CSS_SELECTOR, "section.file")}
        assert shown == {"broken.mp4", "empty.mp4"}
        assert "2 of 7 rows in 2 of 5 files" in d.find_element(By.ID, "match-count").text
        assert browser.console_errors(d) == []


def test_cli_wrong_input_is_one_line(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "jobs/report.py", str(tmp_path / "nowhere")], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"mmsa-ray report: error: {tmp_path / 'nowhere'}: no such label output"


def _label_row(id_, uri, start=None, end=None, error=None, transcript=None):
    ep = [0.05, 0.05, 0.05, 0.6, 0.1, 0.1, 0.05]
    ok = error is None
    return {"id": id_, "uri": uri, "start": start, "end": end, "transcript": transcript,
            "emotion": "joy" if ok else None, "emotion_probs": ep if ok else None,
            "sentiment": "positive" if ok else None, "sentiment_probs": [0.1, 0.2, 0.7] if ok else None,
            "modalities": ["text", "audio"] if ok else None, "text_emotion": "joy" if ok else None,
            "audio_emotion": "neutral" if ok else None, "video_emotion": None, "error": error,
            "model_id": "m-1", "labeled_at": None}


def test_report_written_into_labels_and_unreachable_media(tmp_path):
    """Rows made by hand in LABEL_SCHEMA: players only for reachable media, spans without
    an end, and a report folder inside LABELS that a second report ignores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmsa_ray.batch.label import LABEL_SCHEMA

    labels = tmp_path / "labels"
    labels.mkdir()
    rows = [_label_row("s3://b/x.mp4#t=0,4", "s3://b/x.mp4", 0.0, 4.0, transcript="a"),
            _label_row("s3://b/x.mp4#t=4,9.5", "s3://b/x.mp4", 4.0, 9.5),
            _label_row("s3://b/x.mp4#t=9.5,", "s3://b/x.mp4", 9.5, None),  # open end: up to the last known end
            _label_row("web.mp4", "https://example.org/web.mp4"),
            _label_row("gone.mp4", str(tmp_path / "gone.mp4"), error=f"{tmp_path / 'gone.mp4'}: no such file")]
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), labels / "part-00000.parquet")
    for _ in range(2):  # the second run reads LABELS with the first report inside it
        r = report.make_report(report.ReportConfig(labels=str(labels), output=str(labels / "report"), subtitles="srt"))
        assert (r.rows, r.files, r.failed) == (5, 3, 1)
    model = report.build_model(rows, str(labels / "report"))
    files = {f["name"]: f for f in model["files"]}
    assert files["s3://b/x.mp4"]["media"] is None and files["web.mp4"]["media"] == "https://example.org/web.mp4"
    assert files["gone.mp4"]["media"] is None
    spans = [(r["t0"], r["t1"]) for r in model["rows"] if r["f"] == files["s3://b/x.mp4"]["k"]]
    assert spans == [(0, 4), (4, 9.5), (9.5, 10.5)]  # no duration known: 1 s past its start
    web = next(r for r in model["rows"] if r["id"] == "web.mp4")
    assert (web["t0"], web["t1"]) == (0, 1)
    text = (labels / "report" / "subtitles" / "b__x.mp4.srt").read_text(encoding="utf-8")
    assert text.startswith("1\n00:00:00,000 --> 00:00:04,000\n[joy 0.60 · positive] a\n\n"
                           "2\n00:00:04,000 --> 00:00:09,500\n")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Parquet files"):
        report.read_rows(str(tmp_path / "empty"))


@pytest.mark.slow
def test_speakers_in_the_report_its_subtitles_and_the_browser(tmp_path):
    """Rows with file-local speakers and the run's OUT/_speakers.parquet: each row shows its
    archive speaker (an enrolled name where there is one), the summary has each speaker's
    seconds and shares, WebVTT cues carry voice spans and SRT cues the name, and the page
    draws a speaker lane and filters by speaker."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from mmsa_ray.batch.label import LABEL_SCHEMA
    from mmsa_ray.batch.speakers import SPEAKERS_FILE, SPEAKERS_SCHEMA

    labels = tmp_path / "labels"
    labels.mkdir()
    media = mediagen.write_audio(tmp_path / "call.wav", seconds=6.0, rate=16000, channels=1)
    spans = [(0.0, 2.0, "S1", "Hello there."), (2.0, 3.5, "S2", "Hi, who is it?"), (3.5, 6.0, "S1", "It is me.")]
    rows = [{**_label_row(f"call.wav#t={a:.3f},{b:.3f}", str(media), a, b, transcript=t), "speaker": s,
             "speaker_confidence": 0.9} for a, b, s, t in spans]
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), labels / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"file_id": "call.wav", "speaker": "S1", "speaker_id": "spk2", "name": "bob", "speech_s": 4.5,
          "centroid": [0.0625] * 256},
         {"file_id": "call.wav", "speaker": "S2", "speaker_id": "spk1", "name": None, "speech_s": 1.5,
          "centroid": [0.0625] * 256}], schema=SPEAKERS_SCHEMA), labels / SPEAKERS_FILE)
    out = tmp_path / "report"
    made = report.make_report(report.ReportConfig(labels=str(labels), output=str(out), subtitles="vtt"))
    assert (made.rows, made.files) == (3, 1)  # _speakers.parquet is not read as rows
    vtt = parse_vtt((out / "subtitles" / "call.wav.vtt").read_text())
    assert [c[2] for c in vtt] == ["<v bob>[joy 0.60 · positive] Hello there.",
                                   "<v spk1>[joy 0.60 · positive] Hi, who is it?",
                                   "<v bob>[joy 0.60 · positive] It is me."]
    srt = subtitles.to_srt([subtitles.Cue(0.0, 1.0, "[joy] Hi", "spk1")])
    assert srt.splitlines()[2] == "spk1: [joy] Hi"
    page_html = (out / "index.html").read_text()
    assert '<table id="speakers">' in page_html and "<td>bob</td><td>4.5</td><td>2</td><td>joy 100%</td>" in page_html

    with browser.chrome() as d:
        d.get((out / "index.html").as_uri())
        browser.wait(d, "window.mmsaReportReady && document.querySelectorAll('.timeline svg').length === 1",
                     what="the timeline")
        d.execute_async_script("const done = arguments[0]; window.mmsaReportReady.then(() => done(true))")
        strips = d.find_elements(By.CSS_SELECTOR, ".timeline svg g.mark-rect")
        assert [len(g.find_elements(By.TAG_NAME, "path")) for g in strips] == [3, 3, 3]  # speaker lane on top
        assert [e.text for e in d.find_elements(By.CSS_SELECTOR, "ol.lines li .who")] == ["bob", "spk1", "bob"]
        Select(d.find_element(By.ID, "f-speaker")).select_by_value("spk1")
        browser.wait(d, "document.querySelectorAll('ol.lines li').length === 1", timeout=10, what="the filter")
        assert browser.console_errors(d) == []


def test_faces_in_the_report_a_lane_and_thumbnails_in_the_browser(tmp_path):
    """Rows with faces read (two faces, the main one a real smiling face from scikit-image), a
    row of video without a face and a row whose faces were not read: the page draws a face
    lane over the two rows with faces read, and the first row's line shows both tracks'
    thumbnails as decoded 40 px pictures."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from selenium.webdriver.common.by import By

    from mmsa_ray.batch.label import LABEL_SCHEMA
    from mmsa_ray.face_models import load_face_nets
    from mmsa_ray.faces import faces_in_window

    astronaut = mediagen.skimage_picture("astronaut.png").transpose(2, 0, 1)[None].copy()
    seen = faces_in_window(astronaut, np.array([0.5]), load_face_nets())
    assert seen["face_emotion"] == "joy" and seen["faces"][0]["thumbnail"].startswith("data:image/jpeg;base64,")
    tracks = [seen["faces"][0], {**seen["faces"][0], "track": 1}]
    media = mediagen.write_audio(tmp_path / "talk.wav", seconds=6.0, rate=16000, channels=1)
    faces = [{"faces": tracks, "face_count": 2, "face_emotion": "joy",
              "face_emotion_probs": tracks[0]["emotion_probs"]}, {"faces": [], "face_count": 0}, {}]
    rows = [{**_label_row(f"talk.wav#t={a:.3f},{a + 2:.3f}", str(media), a, a + 2.0, transcript="Hello."), **f}
            for a, f in zip((0.0, 2.0, 4.0), faces, strict=True)]
    labels, out = tmp_path / "labels", tmp_path / "report"
    labels.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), labels / "part-00000.parquet")
    report.make_report(report.ReportConfig(labels=str(labels), output=str(out)))

    with browser.chrome() as d:
        d.get((out / "index.html").as_uri())
        d.execute_async_script("const done = arguments[0]; window.mmsaReportReady.then(() => done(true))")
        browser.wait(d, "document.querySelectorAll('.timeline svg g.mark-rect').length === 3", what="the timeline")
        strips = d.find_elements(By.CSS_SELECTOR, ".timeline svg g.mark-rect")
        assert [len(g.find_elements(By.TAG_NAME, "path")) for g in strips] == [2, 3, 3]  # the face lane on top
        lines = d.find_elements(By.CSS_SELECTOR, "ol.lines li")
        assert [e.text for e in lines[1].find_elements(By.CSS_SELECTOR, ".face")] == ["no face"]
        pictures = lines[0].find_elements(By.CSS_SELECTOR, ".thumbs img")
        assert [p.get_attribute("alt") for p in pictures] == ["main face", "face 2"]
        browser.wait(d, "Array.from(document.querySelectorAll('.thumbs img')).every(i => i.complete)", what="thumbs")
        assert [d.execute_script("return arguments[0].naturalWidth", p) for p in pictures] == [40, 40]
        assert not lines[2].find_elements(By.CSS_SELECTOR, ".thumbs, .face")
