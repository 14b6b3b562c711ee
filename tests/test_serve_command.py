"""`mmsa-ray serve` exactly as the README starts it: its own local Ray the size of this machine,
the shipped starter (then a full multimodal checkpoint), uploads of real speech without a
transcript, a burst past what it takes at once, and Ctrl-C.
"""

import concurrent.futures as cf
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import browser
import mediagen
import numpy as np
import pytest
import requests

from mmsa_ray.labels import EMOTIONS, SENTIMENTS

ROOT = Path(__file__).resolve().parents[1]
MMSA_RAY = str(Path(sys.executable).with_name("mmsa-ray"))  # the venv's console script, as a user types it
SENTENCES = ["I am so happy to see you again.", "This is the worst day of my life."]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (its Ray: GCS, raylet, workers, agents)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()
            and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}


@contextmanager
def serve_command(log: Path, *args: str):
    """`mmsa-ray serve --port P ARGS` until it prints its URLs; yields (base URL, output so far).
    Afterwards: Ctrl-C as a terminal sends it, one line, exit 130, and no Ray process left."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([MMSA_RAY, "serve", "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 420
        while f"POST {base}/v1/predict" not in log.read_text():
            assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        yield base, log.read_text()
        ray_processes = _descendants(proc.pid)
        assert len(ray_processes) >= 3, ray_processes  # GCS, raylet, workers at least
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(180) == 130, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "mmsa-ray serve: interrupted" in log.read_text() and "Traceback" not in log.read_text()
    deadline = time.time() + 30
    while (left := _alive(ray_processes)) and time.time() < deadline:
        time.sleep(1)
    assert not left, f"Ray processes left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> dict[str, Path]:
    """Two espeak-ng sentences with a pause: as a wav, and muxed with video in an mp4."""
    d = tmp_path_factory.mktemp("talk")
    wave, _ = mediagen.spoken(SENTENCES, rate=16000)
    wav = mediagen.write_audio(d / "talk.wav", len(wave) / 16000, 16000, 1, samples=wave[None])
    wave44 = np.interp(np.arange(round(len(wave) * 44100 / 16000)) / 44100, np.arange(len(wave)) / 16000, wave)
    mp4 = mediagen.write_video(d / "talk.mp4", seconds=len(wave) / 16000, width=96, height=64, fps=10,
                               audio=(44100, 1, "aac"), audio_samples=wave44.astype(np.float32)[None])
    return {"wav": wav, "mp4": mp4}


def _upload(base: str, path: Path) -> requests.Response:
    kind = "video/mp4" if path.suffix == ".mp4" else "audio/wav"
    return requests.post(f"{base}/v1/predict", files={"file": (path.name, path.read_bytes(), kind)}, timeout=180)


def _words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


def _assert_utterances(body: dict, modalities: set[str]) -> None:
    """Two utterances with their words and labels; the whole clip, for which no transcript was
    given, is labeled only when the checkpoint reads more than text."""
    utterances = body["utterances"]
    assert len(utterances) == 2, [u["transcript"] for u in utterances]
    for u, sentence in zip(utterances, SENTENCES, strict=True):
        # tiny.en on espeak-ng: a word or two may come back changed
        assert len(_words(u["transcript"]) & _words(sentence)) >= len(_words(sentence)) - 2, u["transcript"]
        assert u["emotion"] in EMOTIONS and u["sentiment"] in SENTIMENTS and [w["word"] for w in u["words"]]
        assert modalities <= set(u["modalities"])
    if modalities == {"text"}:  # a text-only model has nothing to read in the whole clip: no class
        assert (body["emotion"], body["sentiment_probs"], body["no_label_reason"]) == (None, None, "no transcript")
    else:
        assert body["emotion"] in EMOTIONS and body["no_label_reason"] is None


def test_readme_serve_answers_speech_without_a_transcript_and_sheds_load(tmp_path, talk):
    """The starter (text only): the plan fits 2 CPUs, every upload without a transcript is
    transcribed and labeled, a burst past max_inflight_requests gets fast 503s with
    Retry-After and no other 5xx, and it serves again at once afterwards."""
    with serve_command(tmp_path / "serve.log") as (base, out):
        for name in ("Ingress", "Speech", "Preprocessor", "Model"):
            assert f"  {name} " in out, out
        for path in (talk["mp4"], talk["wav"]):
            r = _upload(base, path)
            assert r.status_code == 200, r.text
            _assert_utterances(r.json(), {"text"})
            assert r.json()["utterances"][0]["sentiment"] == "positive"
            assert r.json()["utterances"][1]["sentiment"] == "negative"

        def timed(_):
            t = time.monotonic()
            r = _upload(base, talk["mp4"])
            return r, time.monotonic() - t

        with cf.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(timed, range(24)))
        codes = sorted(r.status_code for r, _ in results)
        assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 4, codes
        refused = [(r, s) for r, s in results if r.status_code == 503]
        assert all(r.headers.get("Retry-After") == "1" and "busy" in r.json()["error"] for r, _ in refused)
        assert max(s for _, s in refused) < min(s for r, s in results if r.status_code == 200)  # at once
        assert requests.get(f"{base}/healthz", timeout=30).status_code == 200
        again = _upload(base, talk["wav"])
        assert again.status_code == 200, again.text
        _page_upload(base, talk["mp4"], tmp_path)


def _page_upload(base: str, path: Path, tmp_path: Path) -> None:
    """The page at / in Chromium: the talk without a transcript -> one line per utterance."""
    from selenium.webdriver.common.by import By

    with browser.chrome() as d:
        d.get(f"{base}/")
        d.find_element(By.ID, "file").send_keys(str(path))
        d.find_element(By.ID, "submit").click()
        finished = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
        state = browser.wait(d, finished, timeout=180, what="the answer")
        assert state == "done", d.find_element(By.ID, "error").text
        items = d.find_elements(By.CSS_SELECTOR, "#lines li")
        lines = [li.find_element(By.CSS_SELECTOR, ".transcript").text for li in items]
        assert len(lines) == 2 and all(lines), lines
        browser.screenshot(d, tmp_path, "serve-command-page.png")


def test_readme_serve_says_what_does_not_fit(tmp_path):
    """Fixed CPUs that cannot all be placed on this machine's Ray: one line naming them, before
    anything waits, and exit status 2."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cpus = str(os.cpu_count())
    r = subprocess.run([MMSA_RAY, "serve", "--port", str(_free_port()), "--speech-num-cpus", cpus,
                        "--model-num-cpus", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "mmsa-ray serve: error: the serve plan needs" in r.stderr and f"Speech 1 x ({cpus} CPU" in r.stderr
    assert "Traceback" not in r.stderr


def test_readme_serve_with_a_multimodal_checkpoint(tmp_path, talk, tiny_checkpoint):
    with serve_command(tmp_path / "serve.log", "--checkpoint", str(tiny_checkpoint)) as (base, _):
        r = _upload(base, talk["mp4"])
        assert r.status_code == 200, r.text
        _assert_utterances(r.json(), {"text", "audio", "video"})
        r = _upload(base, talk["wav"])
        assert r.status_code == 200, r.text
        _assert_utterances(r.json(), {"text", "audio"})
