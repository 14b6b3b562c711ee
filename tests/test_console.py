"""console: the progress line, quiet/verbose Ray settings, and the `label` command's real output
(a subprocess on a small job): one progress line and no Ray INFO lines by default, Ray's lines
with --verbose. The job's inputs are an animated GIF and an .m4b audio book, which the
default extensions list and FFmpeg decodes like any video and audio file."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import mediagen
import pyarrow.dataset as pads
import pytest

from mmsa_ray import console
from mmsa_ray.batch import label

REPO = Path(__file__).resolve().parents[1]


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_lines_in_a_log_and_on_a_terminal(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])

    log = _Stream(tty=False)
    bar = console.Progress("label", 40, stream=log, interval_s=10)
    clock[0] += 5
    bar.update(0)  # warm-up: nothing printed before interval_s
    assert log.getvalue() == ""
    clock[0] += 5
    bar.update(10)  # first rows at 10 s: the rate is over the whole run until later counts come
    clock[0] += 10
    bar.update(20)
    bar.update(20)  # same count, within the interval: nothing new
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "label [#####---------------] 10/40 rows (25%) · 1.00 rows/s · ETA 0:30 · 0:10 elapsed"
    # 10 rows in the 10 s since the first count: 1 row/s, 20 left
    assert lines[1] == "label [##########----------] 20/40 rows (50%) · 1.00 rows/s · ETA 0:20 · 0:20 elapsed"
    assert len(lines) == 2  # close() does not repeat a count already printed
    bar.update(30)  # after close: ignored
    assert len(log.getvalue().splitlines()) == 2

    term = _Stream(tty=True)
    bar = console.Progress("featurize train", 4, "clips", stream=term)
    clock[0] += 1
    bar.update(1)
    clock[0] += 1
    bar.update(4)
    bar.close()
    out = term.getvalue()
    assert out.count("\r") == 3 and out.endswith("\n") and out.count("\n") == 1  # redrawn in place
    assert out.rstrip("\n").split("\r")[-1] == (
        "featurize train [####################] 4/4 clips (100%) · 2.00 clips/s · 0:02 elapsed\x1b[K")

    stalled = _Stream(tty=False)  # a count that stands still prints ever less often
    bar = console.Progress("featurize train", 84, "clips", stream=stalled, interval_s=10)
    for _ in range(80):
        clock[0] += 1
        bar.update(0)
    assert [line.split(" · ")[-1] for line in stalled.getvalue().splitlines()] == [
        "0:10 elapsed", "0:30 elapsed", "1:10 elapsed"]  # 10 s, then 20, then 40 later
    clock[0] += 1
    bar.update(84)  # moved, but less than interval_s after the last line: printed by close()
    bar.close()
    assert stalled.getvalue().splitlines()[-1].startswith("featurize train [####################] 84/84 clips (100%)")

    unknown = _Stream(tty=False)
    bar = console.Progress("read", None, stream=unknown)
    clock[0] += 2
    bar.update(7)
    bar.close()
    assert unknown.getvalue() == "read 7 rows · 3.50 rows/s · 0:02 elapsed\n"


def test_ray_init_kwargs_quiet_and_verbose(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    quiet = console.ray_init_kwargs(verbose=False, address="auto", runtime_env={"env_vars": {"X": "1"}})
    assert quiet["address"] == "auto" and quiet["log_to_driver"] is True and quiet["logging_level"] == logging.WARNING
    env = quiet["runtime_env"]["env_vars"]
    assert env["X"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RAY_DATA_LOG_LEVEL"] == "WARNING" and env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert quiet["runtime_env"]["worker_process_setup_hook"] == "mmsa_ray.console.setup_worker"
    assert env["MMSA_RAY_QUIET"] == "1"
    verbose = console.ray_init_kwargs(verbose=True)
    assert verbose == {"log_to_driver": True,
                       "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"},
                                       "worker_process_setup_hook": "mmsa_ray.console.setup_worker"}}


def _run_label(args: list[str], log: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in console.QUIET_ENV}  # as a fresh shell has it
    r = subprocess.run([sys.executable, "-m", "mmsa_ray.cli", "label", *args], cwd=REPO, env=env,
                       stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=400)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    return text


RAY_INFO = re.compile(r"^(\x1b\[\d+m)?(\(\w+ pid=\d+\)\s*)?(\x1b\[0m)?\s*\S+ \S+\s+INFO ", re.M)


@pytest.mark.slow
def test_label_cli_prints_progress_not_ray_info_gif_and_m4b(ray_local, tmp_path, tiny_checkpoint):
    src = tmp_path / "in"
    src.mkdir()
    mediagen.write_video(src / "anim.gif", 2.0, 96, 72, 10, codec="gif")
    mediagen.write_audio(src / "book.m4b", 3.0, 22050, 1)
    (src / "still.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # not a default extension: not listed
    assert {".gif", ".m4b"} <= set(label.LabelConfig("", "", "").extensions)
    address = ray_local.get_runtime_context().gcs_address
    common = ["--checkpoint", str(tiny_checkpoint), "--ray-address", address, "--batch-size", "2",
              "--decode-batch-size", "1"]

    out = tmp_path / "labels"
    quiet = _run_label([str(src), "--output", str(out), *common], tmp_path / "quiet.log")
    assert "label [####################] 2/2 rows (100%)" in quiet
    assert "labeled 2, failed 0, skipped 0" in quiet
    assert not RAY_INFO.search(quiet), quiet
    assert "Starting execution of Dataset" not in quiet and "Progress bars disabled" not in quiet
    rows = {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}
    assert set(rows) == {"anim.gif", "book.m4b"}
    assert rows["anim.gif"]["error"] is None and rows["anim.gif"]["modalities"] == ["video"]
    assert rows["book.m4b"]["error"] is None and rows["book.m4b"]["modalities"] == ["audio"]

    verbose = _run_label([str(src), "--output", str(tmp_path / "labels_v"), *common, "--verbose"],
                         tmp_path / "verbose.log")
    assert RAY_INFO.search(verbose) and "Starting execution of Dataset" in verbose
    assert "label [####################] 2/2 rows (100%)" in verbose and "labeled 2, failed 0" in verbose
    assert len(verbose.splitlines()) > len(quiet.splitlines()) + 3
