"""The page Serve answers at `/`: upload a clip (and optionally its transcript), see the
prediction on the same timeline component as the report (timeline.py), each modality's
own prediction and the probabilities. It calls the JSON API (POST v1/predict) from the
browser; API errors (413 too large, 415/422 not usable media, 503 busy, ...) are shown
with the API's own message.

When the response carries an `utterances` list (speech recognition ran because no
transcript was given), each utterance is a row on the timeline; otherwise the one
whole-clip prediction spans the clip.

Everything is inlined (Vega bundle included, about 0.9 MB), so the page needs nothing
beyond the endpoint itself.
"""

from __future__ import annotations

import functools
import html

from mmsa_ray import timeline


@functools.cache
def _page_template() -> str:
    return f"""{timeline.page_head("mmsa-ray: emotion and sentiment of a clip")}
<body data-state="ready" data-api="@API_URL@">
<header>
<h1>Emotion and sentiment of a clip</h1>
<p class="sub">Upload a video or audio clip; the model labels it with one of seven emotions and three sentiments,
from its text, audio and video. JSON API: <code>POST @API_URL@</code> · <a href="@DOCS_URL@">API docs</a></p>
</header>
<main>
<form id="upload" class="upload">
<label>clip <input type="file" id="file" name="file" accept="video/*,audio/*" required></label>
<label>transcript (optional)<textarea id="transcript" name="transcript"
 placeholder="what is said in the clip; leave empty if unknown"></textarea></label>
<div><button id="submit" type="submit">Analyse</button></div>
</form>
<p id="status" class="status" role="status"></p>
<div id="error" class="error-box" role="alert" hidden></div>
<section id="result" hidden>
<p class="result-head" id="result-head"></p>
<div class="file-body">
<div class="left"><div class="player" id="player"></div><div class="timeline" id="timeline"></div></div>
<div class="right">
<table class="grid" id="modalities"><thead><tr><th>modality</th><th>its own emotion</th></tr></thead>\
<tbody></tbody></table>
<div id="probs"></div>
<ol class="lines" id="lines"></ol>
</div>
</div>
</section>
</main>
{timeline.timeline_scripts()}
{timeline.json_script("mmsa-probs-spec", timeline.probability_spec())}
<script>{timeline.web_asset("serve_page.js")}</script>
</body>
</html>
"""


def page_html(root_path: str = "") -> str:
    """The page for an app mounted at `root_path` (Serve's route prefix, '' for '/')."""
    base = root_path.rstrip("/")
    return (_page_template().replace("@API_URL@", html.escape(f"{base}/v1/predict"))
            .replace("@DOCS_URL@", html.escape(f"{base}/docs")))
