"""The Serve page at `/`: served by the same app as the JSON API, then driven in headless
Chromium: upload a generated clip, wait for the timeline, check its bars and the
per-modality table against the API's own answer; errors shown with the API's message."""

from __future__ import annotations

import shutil
from pathlib import Path

import browser
import mediagen
import numpy as np
import pytest
import requests

from mmsa_ray.serve import ServeConfig, build_app, http_options

APP = "mmsa-page-test"
MAX_UPLOAD_MB = 1.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, tiny_checkpoint):
    from ray import serve

    config = ServeConfig(checkpoint=str(tiny_checkpoint), port=_free_port(), num_gpus=0, model_num_cpus=0.5,
                         preprocess_num_cpus=0.5, model_threads=1, max_upload_mb=MAX_UPLOAD_MB, max_batch_size=2,
                         preprocess_threads=1, request_timeout_s=120)
    serve.start(http_options=http_options(config))
    serve.run(build_app(config), name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("page-media")
    out = mediagen.clips(d)
    (d / "notes.mp4").write_bytes(b"this is not a video\n" * 100)  # declared video/mp4 by its name
    (d / "notes.txt").write_text("plain text\n")
    (d / "big.mp4").write_bytes(np.random.default_rng(0).bytes(int(MAX_UPLOAD_MB * 1024 * 1024) + 4096))
    return {**out, **{p.stem + p.suffix: p for p in d.glob("notes.*")}, "big": d / "big.mp4"}


def test_page_is_served_at_root_and_api_unchanged(server):
    r = requests.get(f"{server}/", timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'data-api="/v1/predict"' in r.text and '<form id="upload"' in r.text
    assert "window.vegaEmbed=" in r.text and "<script src" not in r.text  # inlined, nothing fetched
    spec = requests.get(f"{server}/openapi.json", timeout=30).json()
    assert "/" not in spec["paths"] and "/v1/predict" in spec["paths"]  # the JSON API's schema is as before


def _upload(d, path: Path, transcript: str | None = None) -> str:
    from selenium.webdriver.common.by import By

    d.find_element(By.ID, "file").send_keys(str(path))
    box = d.find_element(By.ID, "transcript")
    box.clear()
    if transcript:
        box.send_keys(transcript)
    d.execute_script("document.body.dataset.state = 'sent'")
    d.find_element(By.ID, "submit").click()
    return browser.wait(d, "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state",
                        timeout=120, what="the answer")


@pytest.mark.slow
def test_upload_shows_timeline_and_modalities(server, clips, tmp_path):
    from selenium.webdriver.common.by import By

    transcript = "Oh my god, that is the best news I have heard all year!"
    want = requests.post(f"{server}/v1/predict", files={"file": ("av.mp4", clips["av"].read_bytes(), "video/mp4")},
                         data={"transcript": transcript}, timeout=120).json()
    with browser.chrome() as d:
        d.get(f"{server}/")
        assert _upload(d, clips["av"], transcript) == "done", d.find_element(By.ID, "error").text
        # one whole-clip row: one bar per strip (the face lane's says "no face"), coloured as the
        # API's classes, spanning the clip
        strips = d.find_elements(By.CSS_SELECTOR, "#timeline svg g.mark-rect")
        assert [len(g.find_elements(By.TAG_NAME, "path")) for g in strips] == [1, 1, 1]
        head = d.find_element(By.ID, "result-head").text
        assert want["emotion"] in head and want["sentiment"] in head
        labels = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#lines li .chip")]
        assert labels == [want["emotion"], want["sentiment"]]
        cells = {tr.get_attribute("data-modality"): tr.find_elements(By.TAG_NAME, "td")[1].text
                 for tr in d.find_elements(By.CSS_SELECTOR, "#modalities tbody tr")}
        assert cells == {m: want[f"{m}_emotion"] if m in want["modalities"] else "absent"
                         for m in ("text", "audio", "video")}
        # the probabilities chart: 7 + 3 bars
        assert len(d.find_elements(By.CSS_SELECTOR, "#probs svg g.mark-rect path")) == 10
        # the row spans the clip (the player's duration)
        span = d.execute_script("const li = document.querySelector('#lines li .time'); return li.textContent")
        assert span == "0:00.0–0:02.0", span
        assert d.find_element(By.CSS_SELECTOR, "#lines li .transcript").text == transcript
        # faces were read (a video) and there is none: said, not guessed
        assert want["face_count"] == 0 and d.find_element(By.CSS_SELECTOR, "#lines li .face").text == "no face"
        assert "no face" in head
        browser.screenshot(d, tmp_path, "serve-page.png")
        assert browser.console_errors(d) == []


@pytest.mark.slow
def test_upload_errors_are_readable_messages(server, clips, tmp_path):
    from selenium.webdriver.common.by import By

    with browser.chrome() as d:
        d.get(f"{server}/")
        cases = [(clips["notes.mp4"], "HTTP 422", "not a readable media file"),
                 (clips["notes.txt"], "HTTP 415", "unsupported file type 'text/plain'"),
                 (clips["big"], "HTTP 413", "max_upload_mb")]
        for path, status, message in cases:
            assert _upload(d, path) == "error", path
            text = d.find_element(By.ID, "error").text
            assert status in text and message in text, (path.name, text)
            assert not d.find_element(By.ID, "result").is_displayed()
        browser.screenshot(d, tmp_path, "serve-page-error.png")
        # after errors the page still works
        assert _upload(d, clips["audio_only"]) == "done"
        assert len(d.find_elements(By.CSS_SELECTOR, "#timeline svg g.mark-rect path")) == 2
        # the failed uploads log their HTTP status as console errors (Chromium's network log); nothing else
        others = [m for m in browser.console_errors(d) if "the server responded with a status of" not in m]
        assert others == []


@pytest.mark.slow
def test_utterances_are_one_bar_each(request, tmp_path):
    """Without a transcript the API transcribes the upload and answers `utterances`: the page
    then draws one bar per utterance."""
    import wave

    from selenium.webdriver.common.by import By

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    server = request.getfixturevalue("server")  # started only when the test can run
    samples, spans = mediagen.spoken(["I am so happy to see you.", "This is terrible news."])  # as test_utterances
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    want = requests.post(f"{server}/v1/predict", files={"file": ("speech.wav", path.read_bytes(), "audio/wav")},
                         timeout=120).json()
    n = len(want["utterances"])
    assert n == len(spans), want["utterances"]
    with browser.chrome() as d:
        d.get(f"{server}/")
        assert _upload(d, path) == "done", d.find_element(By.ID, "error").text
        strips = d.find_elements(By.CSS_SELECTOR, "#timeline svg g.mark-rect")
        # a speaker lane (one voice: S1 throughout) over the emotion and sentiment strips
        assert [len(g.find_elements(By.TAG_NAME, "path")) for g in strips] == [n, n, n]
        assert {u["speaker"] for u in want["utterances"]} == {"S1"}
        lines = d.find_elements(By.CSS_SELECTOR, "#lines li")
        assert [li.find_element(By.CSS_SELECTOR, ".transcript").text for li in lines] == \
            [u["transcript"] for u in want["utterances"]]
        browser.screenshot(d, tmp_path, "serve-page-utterances.png")
