"""`mmsa-ray <command>` and `python jobs/<command>.py`: wrong input is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys
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
    assert capsys.readouterr().err.startswith(f"mmsa-ray featurize: error: manifest {bad}: missing column(s) ['transcript'")


def test_train_checks_meld_dir_before_starting_ray(tmp_path, capsys):
    import ray

    ray_before = ray.is_initialized()  # True when a Ray test ran earlier in this process
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--meld-dir", str(tmp_path / "MELD.Raw"), "--output", str(tmp_path / "ckpt")])
    assert exc.value.code == 2
    assert f"--meld-dir: MELD root {tmp_path / 'MELD.Raw'} is not a directory" in capsys.readouterr().err
    assert ray.is_initialized() == ray_before  # the check came before Ray was started


def test_other_exceptions_keep_their_traceback(monkeypatch):
    from mmsa_ray import featurize

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
