"""`mmsa-ray <command>` and `python jobs/<command>.py`: wrong input is one line and exit status 2;
Ctrl-C is one line and exit status 130."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmsa_ray import cli

ROOT = Path(__file__).resolve().parents[1]


def test_usage_and_unknown_command(capsys):
    assert cli.main([]) == 0
    assert "commands:" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_missing_manifest_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "clips.csv"
    assert cli.main(["featurize", "--manifest", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"mmsa-ray featurize: error: manifest {missing}: no such file\n"


def test_bad_manifest_row_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "clips.csv"
    bad.write_text("id,path\nx,/nowhere.mp4\n")
    assert cli.main(["featurize", "--manifest", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(
        f"mmsa-ray featurize: error: manifest {bad}: missing column(s) ['transcript'"
    )


def test_train_checks_meld_dir_before_starting_ray(tmp_path, capsys):
    import ray

    ray_before = ray.is_initialized()  # True when a Ray test ran earlier in this process
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--meld-dir", str(tmp_path / "MELD.Raw"), "--output", str(tmp_path / "ckpt")])
    assert exc.value.code == 2
    assert f"--meld-dir: MELD root {tmp_path / 'MELD.Raw'} is not a directory" in capsys.readouterr().err
    assert ray.is_initialized() == ray_before  # the check came before Ray was started


def test_other_exceptions_keep_their_traceback(monkeypatch):
    from mmsa_ray.train import featurize

    def broken(argv):
        raise RuntimeError("a bug, not a wrong input")

    monkeypatch.setattr(featurize, "main", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["featurize"])


def test_job_entrypoint_reports_wrong_input_like_the_cli(tmp_path):
    missing = tmp_path / "clips.parquet"
    r = subprocess.run([sys.executable, "jobs/featurize.py", "--manifest", str(missing)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"mmsa-ray featurize: error: manifest {missing}: no such file"
    assert "Traceback" not in r.stderr


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    from mmsa_ray.train import featurize

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(featurize, "main", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    assert cli.main(["featurize"]) == 130
    assert signal.getsignal(signal.SIGINT) is previous  # cli's own handler is gone again
    captured = capsys.readouterr()
    assert captured.err.strip() == "mmsa-ray featurize: interrupted" and captured.out == ""
    print("streams restored")
    assert capsys.readouterr().out == "streams restored\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ctrl_c_on_serve_stops_ray_with_one_line(tmp_path, tiny_checkpoint):
    """`mmsa-ray serve` on its own local Ray; Ctrl-C as a terminal sends it (SIGINT to the
    whole foreground process group): one line, exit 130, no traceback, the port closed."""
    import requests

    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmsa_ray.cli", "serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
         "--num-gpus", "0", "--model-num-cpus", "0.5", "--preprocess-num-cpus", "0.5"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while True:
            assert proc.poll() is None, f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
            if f"POST http://127.0.0.1:{port}/v1/predict" in log.read_text():  # serve.run returned
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200:
                        break
                except requests.RequestException:  # too busy to answer yet
                    pass
            time.sleep(1)
        time.sleep(1)
        before = log.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    after = [line for line in text[len(before):].splitlines() if line.strip()]
    assert rc == 130, text[-3000:]
    assert after == ["mmsa-ray serve: interrupted"], text[-3000:]
    assert "Traceback" not in text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
