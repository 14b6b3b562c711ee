"""The emotion/sentiment timeline: one Vega-Lite chart (built with altair) plus a little
JavaScript glue, shared by the offline report (report/html.py) and the Serve page (serve/page.py).

Why altair / Vega-Lite: the chart is a declarative JSON spec built in Python, the same
spec renders in the report and on the Serve page, and vl-convert-python ships the
vega + vega-lite + vega-embed bundle, so a page inlines it once and works offline
(no CDN, no server). Plotly and Bokeh can embed their JS too, but neither gives a spec
that the page can refill with other rows as simply.

Timeline rows (JavaScript objects, one per labeled or failed row):
    i       row index (the page maps a clicked mark back to its row with it)
    t0, t1  span, seconds in the file's time (t1 > t0)
    emotion, ec       top emotion (or "failed", or "no signal": no label) and its probability in [0, 1]
    sentiment, sc     top sentiment (or "failed", or "no signal") and its probability
    label   a short text for the tooltip ("joy 0.82 · positive")
    transcript, text_emotion, audio_emotion, video_emotion   shown in the tooltip
    speaker, spc      who speaks (rows with speakers) and how clearly, 0..1
    face, faces       the main face's expression ("no face" for video without one; null when
                      faces were not read) and how many faces the row shows
Two strips share the x axis: emotion above, sentiment below; colour = class, opacity =
confidence. One mark per row in each strip. Rows with faces add a face strip above them, and
rows with speakers a speaker strip on top (the spec's usermeta.face_strip and speaker_strip,
put in by web/timeline.js): the face's expression in the emotions' colours, one colour per
speaker.
"""

from __future__ import annotations

import functools
import html
import json
import os
from importlib import resources
from pathlib import Path

from mmsa_ray.labels import EMOTIONS, SENTIMENTS

DATA_NAME = "rows"  # the Vega-Lite named dataset the page fills in
FAILED = "failed"  # the class of a row whose decode failed (no prediction)
NO_SIGNAL = "no signal"  # the class of a row none of whose modalities had a signal (no label, by design)

# Colours people read as these emotions; "failed" grey-black so a gap in labels is visible,
# "no signal" pale grey: a row with nothing to read, shown as such, never as a class.
EMOTION_COLOURS = {
    "anger": "#d62728", "disgust": "#8c6d31", "fear": "#9467bd", "joy": "#f2b701",
    "neutral": "#a5acaf", "sadness": "#1f77b4", "surprise": "#ff7f0e", FAILED: "#444444",
    NO_SIGNAL: "#dddddd",
}
SENTIMENT_COLOURS = {"negative": "#c0392b", "neutral": "#a5acaf", "positive": "#27ae60", FAILED: "#444444",
                     NO_SIGNAL: "#dddddd"}
assert tuple(EMOTION_COLOURS)[:-2] == EMOTIONS and tuple(SENTIMENT_COLOURS)[:-2] == SENTIMENTS


def timeline_chart():
    """The altair chart (vconcat of the emotion and the sentiment strip) over the named
    dataset DATA_NAME; the page supplies the rows (see module docstring) and the width."""
    import altair as alt

    data = alt.NamedData(name=DATA_NAME)
    tooltip = [
        alt.Tooltip("label:N", title="labels"),
        alt.Tooltip("t0:Q", title="start s", format=".2f"),
        alt.Tooltip("t1:Q", title="end s", format=".2f"),
        alt.Tooltip("ec:Q", title="emotion confidence", format=".2f"),
        alt.Tooltip("sc:Q", title="sentiment confidence", format=".2f"),
        alt.Tooltip("text_emotion:N", title="text says"),
        alt.Tooltip("audio_emotion:N", title="audio says"),
        alt.Tooltip("video_emotion:N", title="video says"),
        alt.Tooltip("transcript:N", title="transcript"),
    ]

    def strip(field: str, conf: str, colours: dict[str, str], title: str, axis: bool):
        return (
            alt.Chart(data)
            .mark_rect(cursor="pointer", stroke="white", strokeWidth=0.5)
            .encode(
                # the x axis once, under the lower strip (the scale is shared)
                x=alt.X("t0:Q", title="seconds", scale=alt.Scale(zero=True, nice=False),
                        axis=alt.Axis() if axis else None),
                x2="t1:Q",
                color=alt.Color(f"{field}:N", title=title,
                                scale=alt.Scale(domain=list(colours), range=list(colours.values())),
                                legend=alt.Legend(orient="top", direction="horizontal", titleOrient="left",
                                                  symbolType="square", columns=len(colours))),
                opacity=alt.Opacity(f"{conf}:Q", scale=alt.Scale(domain=[0, 1], range=[0.2, 1]), legend=None),
                tooltip=tooltip,
            )
            .properties(height=26, width=600, name=f"{field}_strip")
        )

    return (
        alt.vconcat(strip("emotion", "ec", EMOTION_COLOURS, "emotion", axis=False),
                    strip("sentiment", "sc", SENTIMENT_COLOURS, "sentiment", axis=True), spacing=4)
        .resolve_scale(x="shared", color="independent", opacity="independent")
        .configure_view(stroke=None)
        .configure_axis(labelFontSize=10, titleFontSize=10)
    )


def speaker_strip():
    """The speaker strip: a mark per row with a speaker, coloured by speaker (the page sets
    the colour scale: one colour per speaker, the same as its chips)."""
    import altair as alt

    return (
        alt.Chart(alt.NamedData(name=DATA_NAME))
        .transform_filter("datum.speaker != null")
        .mark_rect(cursor="pointer", stroke="white", strokeWidth=0.5)
        .encode(x=alt.X("t0:Q", scale=alt.Scale(zero=True, nice=False), axis=None), x2="t1:Q",
                color=alt.Color("speaker:N", title="speaker",
                                legend=alt.Legend(orient="top", direction="horizontal", titleOrient="left",
                                                  symbolType="square")),
                opacity=alt.Opacity("spc:Q", scale=alt.Scale(domain=[0, 1], range=[0.3, 1]), legend=None),
                tooltip=[alt.Tooltip("speaker:N", title="speaker"),
                         alt.Tooltip("spc:Q", title="speaker confidence", format=".2f"),
                         alt.Tooltip("t0:Q", title="start s", format=".2f"),
                         alt.Tooltip("transcript:N", title="transcript")])
        .properties(height=14, width=600, name="speaker_strip")
    )


NO_FACE = "no face"  # the face strip's class of a row with video but no face
FACE_COLOURS = {**{e: EMOTION_COLOURS[e] for e in EMOTIONS}, NO_FACE: "#f0f0f0"}


def face_strip():
    """The face strip: a mark per row whose faces were read, coloured by the main face's
    expression in the emotions' colours ("no face": near white)."""
    import altair as alt

    return (
        alt.Chart(alt.NamedData(name=DATA_NAME))
        .transform_filter("datum.face != null")
        .mark_rect(cursor="pointer", stroke="white", strokeWidth=0.5)
        .encode(x=alt.X("t0:Q", scale=alt.Scale(zero=True, nice=False), axis=None), x2="t1:Q",
                color=alt.Color("face:N", title="face", scale=alt.Scale(domain=list(FACE_COLOURS),
                                                                       range=list(FACE_COLOURS.values())),
                                legend=alt.Legend(orient="top", direction="horizontal", titleOrient="left",
                                                  symbolType="square", values=[NO_FACE])),
                tooltip=[alt.Tooltip("face:N", title="main face"), alt.Tooltip("faces:Q", title="faces"),
                         alt.Tooltip("t0:Q", title="start s", format=".2f"),
                         alt.Tooltip("transcript:N", title="transcript")])
        .properties(height=14, width=600, name="face_strip")
    )


def _unit(chart) -> dict:
    spec = chart.to_dict()
    return {k: spec[k] for k in ("data", "transform", "mark", "encoding", "height", "width", "name") if k in spec}


@functools.cache
def timeline_spec() -> dict:
    """The Vega-Lite spec of timeline_chart() as a dict (no rows in it), with the face and
    speaker strips' unit specs in usermeta.face_strip and usermeta.speaker_strip."""
    spec = timeline_chart().to_dict()
    spec["usermeta"] = {"face_strip": _unit(face_strip()), "speaker_strip": _unit(speaker_strip())}
    return spec


@functools.cache
def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script (about 0.9 MB) that defines
    window.vegaEmbed, from vl-convert-python, at the Vega-Lite version altair writes.

    vl-convert bundles it anew on every call (3 s on an idle core, 20 s on a busy one), so
    the result is kept in the user's cache folder, keyed by both versions."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    vl_version = vl_version_for_vl_convert()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmsa_ray"
    path = cache / f"vega-embed-bundle-vlc{vlc.__version__}-{vl_version}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vlc.javascript_bundle(vl_version=vl_version)
    try:  # atomic: a concurrent reader sees the whole file or none
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a read-only home: bundle again next time
        pass
    return bundle


def web_asset(name: str) -> str:
    """A file of mmsa_ray/web (page JavaScript and CSS)."""
    return resources.files("mmsa_ray").joinpath("web", name).read_text(encoding="utf-8")


def page_head(title: str) -> str:
    """`<!DOCTYPE html>` up to `</head>` of a page of ours: UTF-8, the viewport, no favicon
    request, `title` (HTML-escaped here) and the shared stylesheet (web/page.css)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>{web_asset("page.css")}</style>
</head>"""


def json_script(element_id: str, value) -> str:
    """`value` as a <script type="application/json"> element. Every '<' is written as
    \\u003c (same JSON value), so no string in the data can end the element early or open
    an HTML comment in it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def timeline_scripts() -> str:
    """The <script> elements a page needs for mmsaTimeline(): the Vega bundle, the
    timeline spec and the glue (web/timeline.js). Include once per page."""
    return "\n".join([
        f"<script>{vega_bundle()}</script>",
        json_script("mmsa-timeline-spec", timeline_spec()),
        f"<script>{web_asset('timeline.js')}</script>",
    ])


PROBS_NAME = "probs"  # the named dataset of probability_spec(): {head, cls, p}


@functools.cache
def probability_spec() -> dict:
    """Vega-Lite spec: the emotion and sentiment probabilities of one prediction as two bar
    charts over the named dataset PROBS_NAME, rows {head: "emotion"|"sentiment", cls, p}."""
    import altair as alt

    data = alt.NamedData(name=PROBS_NAME)

    def bars(head: str, colours: dict[str, str]):
        classes = [c for c in colours if c not in (FAILED, NO_SIGNAL)]
        return (
            alt.Chart(data, title=head).transform_filter(alt.datum.head == head).mark_bar()
            .encode(y=alt.Y("cls:N", sort=classes, title=None),
                    x=alt.X("p:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
                    color=alt.Color("cls:N", scale=alt.Scale(domain=classes, range=[colours[c] for c in classes]),
                                    legend=None),
                    tooltip=[alt.Tooltip("cls:N", title=head), alt.Tooltip("p:Q", format=".3f")])
            .properties(width=170, height=alt.Step(14))
        )

    return (alt.hconcat(bars("emotion", EMOTION_COLOURS), bars("sentiment", SENTIMENT_COLOURS))
            .resolve_scale(color="independent").to_dict())
