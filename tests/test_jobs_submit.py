"""`ray job submit --working-dir <repo> -- python jobs/<name>.py ...` and `serve deploy` against
a real Ray head with token authentication, exactly as on a cluster (cluster.yaml starts every
node with RAY_AUTH_MODE=token).

One head per module (tests/raycluster.py: `ray start --head --block` in its own temp dir,
HOME and ports), so it neither sees nor disturbs any other Ray on the machine. It is torn
down by process id (its own process tree), never with `ray stop`, which kills every Ray
process on the machine.

Adding an end-to-end job is one entry in SUBMIT_CASES: argv after `python`, a text its
logs must contain, the final status and exit code it must end with, globs (relative to
the case's tmp dir) its outputs must match, and optionally a case that must succeed first
(train -> evaluate) and a check of what it wrote. Independent cases are submitted side by
side (--no-wait); a case with `after` is submitted once its predecessor has SUCCEEDED.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import raycluster
from raycluster import BIN, free_port

# A real head, real job uploads, real featurize/train/evaluate/label jobs and a Serve app:
# a few minutes on a 2-core box.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class SubmitCase:
    id: str
    argv: list[str]                 # after `python`; formatted with {tmp} (the case's tmp dir), each
                                    # fixture in `fixtures`, and {dir[<case id>]} (an earlier case's tmp dir)
    expect_in_logs: str
    outputs: tuple[str, ...] = ()   # globs under {tmp}: each must match something the job wrote
    fixtures: list[str] = field(default_factory=list)  # pytest fixtures formatted into argv
    status: str = "SUCCEEDED"       # the job's final status ...
    exit_code: int = 0              # ... and its entrypoint's exit code (argparse errors: 2)
    after: str | None = None        # a case that must have SUCCEEDED before this one is submitted
    check: Callable[[Path, dict[str, Path]], None] | None = None  # more assertions: (its tmp dir, every case's)


def _check_featurized(tmp: Path, dirs: dict[str, Path]) -> None:
    (done,) = tmp.glob("features/*/test/_COMPLETE")   # <cache>/<key>/<split>/_COMPLETE
    info = json.loads(done.read_text())
    assert (info["rows"], info["errors"]) == (14, []), info
    assert info["modalities"] == ["text", "audio", "video"], info
    import pyarrow.dataset as pads

    table = pads.dataset(str(done.parent), format="parquet").to_table()
    assert table.num_rows == 14, table.schema
    assert {"id", "video_emb", "text_emb", "audio", "mask"} <= set(table.column_names), table.schema


def _check_trained(tmp: Path, dirs: dict[str, Path]) -> None:
    report = json.loads((tmp / "ckpt_report" / "report.json").read_text())
    assert report["modalities"] == "text" and report["checkpoint"] == str(tmp / "ckpt"), report
    run = json.loads((tmp / "ckpt.train.json").read_text())
    assert run["best_metrics"]["epoch"] in (1, 2) and len(run["history"]) == 2, run["best_metrics"]


def _check_evaluated(tmp: Path, dirs: dict[str, Path]) -> None:
    report = json.loads((tmp / "eval" / "report.json").read_text())
    assert (report["n"], report["modalities"], report["errors"]) == (28, "text", []), report
    emotion = report["heads"]["emotion"]
    assert len(emotion["confusion"]) == 7 and sum(map(sum, emotion["confusion"])) == 28, emotion
    # The same checkpoint on the same dev records: the numbers train's own dev report has.
    trained = json.loads((dirs["train-sample"] / "ckpt_report" / "report.json").read_text())
    for head in ("emotion", "sentiment"):
        assert report["heads"][head]["confusion"] == trained["heads"][head]["confusion"], head


# The hostile files the label job meets beside the sample clips (tests/mediagen.hostile_files).
HOSTILE = ("empty", "text", "truncated_third", "corrupt_middle")


def _check_labeled(tmp: Path, dirs: dict[str, Path]) -> None:
    import pyarrow.dataset as pads

    table = pads.dataset(str(tmp / "labels"), format="parquet").to_table(columns=["id", "error", "emotion_probs"])
    rows = table.to_pylist()
    assert len(rows) == 28 + len(HOSTILE), len(rows)
    failed = {Path(r["id"]).stem: r["error"] for r in rows if r["error"] is not None}
    assert set(failed) == set(HOSTILE), failed      # one error row per hostile file, with a reason ...
    assert all(isinstance(e, str) and e for e in failed.values()), failed
    good = [r for r in rows if r["error"] is None]   # ... and every sample clip labeled
    assert len(good) == 28 and all(len(r["emotion_probs"]) == 7 for r in good)


SMALL_MODEL = ["--num-frames", "8", "--size", "64"]   # = conftest's small_model_config

SUBMIT_CASES = [
    *(
        SubmitCase(f"{m}-help", [f"jobs/{m}.py", "--help"], f"usage: mmsa-ray {m}")
        for m in ("featurize", "train", "evaluate", "label")
    ),
    # A bad flag is argparse's exit 2, and the job ends FAILED with the usage error in its logs
    # (every job parses with argparse; two cases keep the module lean).
    *(
        SubmitCase(f"{m}-bad-flag", [f"jobs/{m}.py", "--no-such-flag"], f"mmsa-ray {m}: error: ",
                   status="FAILED", exit_code=2)
        for m in ("train", "evaluate")   # an unknown flag; a missing required one (argparse words it first)
    ),
    # Frozen-encoder features of half the synthetic test split, all modalities, small model.
    SubmitCase(
        "featurize-sample",
        ["jobs/featurize.py", "--meld-dir", "{sample_root}", "--splits", "test", "--limit", "14", *SMALL_MODEL,
         "--cache-dir", "{tmp}/features", "--batch-size", "7", "--decode-batch-size", "7"],
        "test: 14 clips, 0 failed",
        outputs=("features/*/test/_COMPLETE", "features/*/test/*.parquet"),
        fixtures=["sample_root"],
        check=_check_featurized,
    ),
    # Ray Train, one worker, two epochs on the transcripts (text alone opens no media file).
    SubmitCase(
        "train-sample",
        ["jobs/train.py", "--meld-dir", "{sample_root}", "--modalities", "text", "--limit", "28", "--epochs", "2",
         "--patience", "0", "--num-workers", "1", "--batch-size", "16", *SMALL_MODEL, "--output", "{tmp}/ckpt",
         "--storage-path", "{tmp}/store", "--name", "run", "--cache-dir", "{tmp}/features"],
        "[train] dev:",
        outputs=("ckpt/config.json", "ckpt/model.safetensors", "ckpt_report/report.json", "ckpt_report/report.md",
                 "ckpt.train.json", "store/run/*"),
        fixtures=["sample_root"],
        check=_check_trained,
    ),
    # The checkpoint train just wrote, on the same dev records (its feature cache is reused).
    SubmitCase(
        "evaluate-trained",
        ["jobs/evaluate.py", "--checkpoint", "{dir[train-sample]}/ckpt", "--meld-dir", "{sample_root}",
         "--split", "dev", "--limit", "28", "--modalities", "text", "--cache-dir", "{dir[train-sample]}/features",
         "--device", "cpu", "--output", "{tmp}/eval"],
        "report: ",
        outputs=("eval/report.json", "eval/report.md", "eval/confusion_emotion.png", "eval/confusion_sentiment.png"),
        fixtures=["sample_root"],
        after="train-sample",
        check=_check_evaluated,
    ),
    # Real work on the embedded defaults: the tiny checkpoint labels the synthetic test split,
    # with hostile files beside it: they become error rows and the job still SUCCEEDS (exit 0).
    # Its actors reserve little: featurize and train run on the same 4-CPU head at the same
    # time, and jobs whose actors hold every CPU wait on each other's tasks for ever.
    SubmitCase(
        "label-sample",
        ["jobs/label.py", "{label_input}", "--checkpoint", "{tiny_checkpoint}",
         "--output", "{tmp}/labels", "--actors", "1,1", "--decode-cpus", "0.5", "--cpus-per-actor", "0.5",
         "--face-cpus-per-actor", "0"],
        "",
        outputs=("labels/*.parquet",),
        fixtures=["label_input", "tiny_checkpoint"],
        check=_check_labeled,
    ),
]


@pytest.fixture(scope="module")
def label_input(sample_root, tmp_path_factory) -> Path:
    """The synthetic test split (28 clips) plus a few files no decoder accepts."""
    import shutil

    import mediagen

    d = tmp_path_factory.mktemp("label-input")
    for clip in sorted((sample_root / "output_repeated_splits_test").glob("*.mp4")):
        shutil.copy(clip, d / clip.name)
    for name, path in mediagen.hostile_files(d / "_hostile").items():
        if name in HOSTILE:
            path.rename(d / f"{name}.mp4")
    shutil.rmtree(d / "_hostile")
    return d


@dataclass
class Head:
    dashboard: str                  # http://127.0.0.1:<port>
    token: str
    home: Path
    base_env: dict[str, str]

    def env(self, token: str | None = "own", mode: str | None = "token") -> dict[str, str]:
        """Client environment: with the head's token (default), another token, or none."""
        env = dict(self.base_env)
        if mode is not None:
            env["RAY_AUTH_MODE"] = mode
        if token == "own":
            env["RAY_AUTH_TOKEN"] = self.token
        elif token is not None:
            env["RAY_AUTH_TOKEN"] = token
        return env

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300, background: bool = False):
        """Run the `ray` CLI as a client of this head; with background, the Popen."""
        cmd, env = [str(BIN / "ray"), *args], self.env() if env is None else env
        if background:
            return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def serve(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
        """Run the `serve` CLI as a client of this head (pass `-a self.dashboard`)."""
        cmd, env = [str(BIN / "serve"), *args], self.env() if env is None else env
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def submit(self, submission_id: str, argv: list[str], env: dict[str, str] | None = None,
               wait: bool = True, background: bool = False):
        """`ray job submit --working-dir <repo> -- python <argv>`; wait=False adds --no-wait."""
        return self.ray(
            "job", "submit", "--address", self.dashboard, "--working-dir", str(ROOT),
            "--submission-id", submission_id, *([] if wait else ["--no-wait"]), "--", "python", *argv,
            env=env, background=background,
        )

    def wait(self, submission_id: str, timeout: float = 300) -> dict:
        """Poll until the job is SUCCEEDED, FAILED or STOPPED; its final record."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(submission_id)
            if info is not None and info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return info
            assert time.monotonic() < deadline, f"{submission_id} still {info and info['status']} after {timeout} s"
            time.sleep(0.5)

    def info(self, submission_id: str) -> dict | None:
        """The job's record from the jobs REST API (status, message, ...); None if unknown."""
        req = urllib.request.Request(
            f"{self.dashboard}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def logs(self, submission_id: str) -> str:
        out = self.ray("job", "logs", "--address", self.dashboard, submission_id)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout


@pytest.fixture(scope="module")
def head():
    """One head, no worker nodes (tests/raycluster.py), with 4 logical CPUs on this 2-core box
    (as conftest's ray_local): the featurize, train and label jobs run side by side, and each
    holds an encoder actor while its decode tasks need CPUs too; on 2 they could wait on each
    other forever."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the head is torn down through /proc")
    cluster = raycluster.start_cluster(head_cpus=4)
    try:
        yield Head(cluster.dashboard, cluster.token, cluster.root / "home", cluster.base_env)
    finally:
        cluster.stop()


def test_submit_with_token_runs_the_job(head, submitted):
    # `submitted`: the SUBMIT_CASES jobs are already running while this module's quick checks go on.
    out = head.submit(
        "ok-1", ["-c", "import sys, pathlib; print('cwd-has-jobs', pathlib.Path('jobs/label.py').is_file())"]
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "cwd-has-jobs True" in out.stdout        # the working dir arrived: jobs/ is importable
    assert head.info("ok-1")["status"] == "SUCCEEDED"


@pytest.mark.parametrize(
    "token,mode,message",
    [
        (None, None, "Unauthorized: Missing authentication token"),     # plain client, no token
        ("0" * 64, "token", "Forbidden: Invalid authentication token"),  # wrong token
    ],
    ids=["no-token", "wrong-token"],
)
def test_submit_without_the_token_is_refused(head, token, mode, message):
    out = head.submit(f"refused-{mode}", ["-c", "print('must not run')"], env=head.env(token=token, mode=mode))
    assert out.returncode != 0
    assert message in out.stderr + out.stdout
    assert "must not run" not in out.stdout
    assert head.info(f"refused-{mode}") is None  # nothing was created on the head


def test_failing_job_is_failed_with_its_error_in_the_logs(head, tmp_path):
    argv = ["jobs/label.py", "/nonexistent/videos", "--checkpoint", "/nonexistent/ckpt",
            "--output", str(tmp_path / "o")]
    out = head.submit("fail-1", argv)
    assert out.returncode != 0
    info = head.info("fail-1")
    assert info["status"] == "FAILED", info
    assert "exit code" in info["message"], info["message"]
    assert "/nonexistent/ckpt" in head.logs("fail-1")
    assert not (tmp_path / "o").exists()


class Submitted:
    """The cases' jobs on the head: independent ones all submitted at once (--no-wait, so
    their start-up overlaps), each `after` case once its predecessor has SUCCEEDED."""

    def __init__(self, head: Head, tmp_path_factory, request, selected: set[str]):
        self.head, self.request, self.selected = head, request, selected
        self.dirs = {c.id: tmp_path_factory.mktemp(c.id) for c in SUBMIT_CASES if c.id in selected}
        self.sids: dict[str, str] = {}

    def argv(self, case: SubmitCase) -> list[str]:
        values = {"tmp": str(self.dirs[case.id]), "dir": {k: str(v) for k, v in self.dirs.items()},
                  **{f: str(self.request.getfixturevalue(f)) for f in case.fixtures}}
        return [a.format(**values) for a in case.argv]

    def submit_independent(self) -> None:
        procs = {}
        for case in SUBMIT_CASES:
            if case.id in self.selected and case.after is None:
                sid = self.sids[case.id] = f"case-{case.id}"
                procs[sid] = self.head.submit(sid, self.argv(case), wait=False, background=True)
        for sid, proc in procs.items():  # the CLIs ran side by side; each must have been accepted
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"{sid}: {out[-2000:]}{err[-2000:]}"

    def final(self, case: SubmitCase, timeout: float = 420) -> tuple[dict, str]:
        """Wait for the case's job (submitting it first if it waits on another); its record and logs."""
        if case.id not in self.sids:
            before = next(c for c in SUBMIT_CASES if c.id == case.after)
            if before.id not in self.selected:
                pytest.skip(f"needs case {before.id}, not selected")
            info, _ = self.final(before, timeout)
            if info["status"] != "SUCCEEDED":
                pytest.fail(f"{before.id} ended {info['status']}: {case.id} was not submitted")
            sid = self.sids[case.id] = f"case-{case.id}"
            out = self.head.submit(sid, self.argv(case), wait=False)
            assert out.returncode == 0, f"{sid}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        sid = self.sids[case.id]
        info = self.head.wait(sid, timeout)
        return info, self.head.logs(sid)


@pytest.fixture(scope="module")
def submitted(head, tmp_path_factory, request) -> Submitted:
    selected = {  # only the cases this pytest run collected (-k, node ids)
        item.callspec.params["case"].id
        for item in request.session.items
        if "case" in getattr(getattr(item, "callspec", None), "params", {})
    }
    selected = {c.id for c in SUBMIT_CASES if c.id in selected}
    jobs = Submitted(head, tmp_path_factory, request, selected)
    jobs.submit_independent()
    return jobs


@pytest.mark.parametrize("case", SUBMIT_CASES, ids=[c.id for c in SUBMIT_CASES])
def test_submit_job(head, submitted, case: SubmitCase):
    info, logs = submitted.final(case)
    tmp = submitted.dirs[case.id]
    assert info["status"] == case.status, f"{info['message']}\n{logs[-3000:]}"
    # The entrypoint's exit code, as the jobs API records it (and words it in the message).
    assert info.get("driver_exit_code") == case.exit_code, info
    if case.exit_code:
        assert f"exit code {case.exit_code}" in info["message"], info["message"]
    assert case.expect_in_logs in logs, logs[-3000:]
    for pattern in case.outputs:
        assert list(tmp.glob(pattern)), f"{case.id}: nothing matches {pattern} under {tmp}"
    if case.status == "FAILED":
        assert not [p for p in tmp.iterdir()], f"a failed job left {list(tmp.iterdir())}"
    if case.check is not None:
        case.check(tmp, submitted.dirs)


# ----------------------------------------------------------------------------- Serve


def _serve_config(tmp: Path, checkpoint: Path, port: int) -> Path:
    """jobs/serve.yaml for this head: the tiny checkpoint, CPU only, small requests, a free port."""
    import yaml

    config = yaml.safe_load((ROOT / "jobs" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    (application,) = config["applications"]
    application["args"].update(
        checkpoint=str(checkpoint), num_gpus=0, model_num_cpus=0.5, model_threads=1, min_replicas=1, max_replicas=1,
        preprocess_replicas=1, preprocess_num_cpus=0.5, preprocess_threads=1, speech_replicas=1, speech_num_cpus=0.5,
    )
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _serve_status(head: Head) -> dict:
    import yaml

    out = head.serve("status", "-a", head.dashboard)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return yaml.safe_load(out.stdout) or {}


def test_serve_deploy_with_token(head, tiny_checkpoint, tmp_path):
    """`serve deploy` of jobs/serve.yaml (adapted to this box) through the token-auth jobs API;
    the app answers /v1/predict; without the token the deploy is refused."""
    import mediagen
    import requests

    port = free_port()
    config = _serve_config(tmp_path, tiny_checkpoint, port)
    refused = head.serve("deploy", str(config), "-a", head.dashboard, env=head.env(token=None, mode=None))
    assert refused.returncode != 0
    assert "Unauthorized: Missing authentication token" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    assert not _serve_status(head).get("applications"), "an unauthenticated deploy created an application"

    out = head.serve("deploy", str(config), "-a", head.dashboard)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    try:
        deadline = time.monotonic() + 240
        while True:
            app = (_serve_status(head).get("applications") or {}).get("mmsa") or {}
            if app.get("status") == "RUNNING":
                break
            assert app.get("status") not in ("DEPLOY_FAILED", "UNHEALTHY"), app
            assert time.monotonic() < deadline, f"mmsa not RUNNING after 240 s: {app}"
            time.sleep(2)
        clip = mediagen.clips(tmp_path / "clips")["av"]
        with open(clip, "rb") as f:
            r = requests.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("av.mp4", f, "video/mp4")},
                              data={"transcript": "I can't believe it!"}, timeout=120)
        assert r.status_code == 200, r.text[-2000:]
        row = r.json()
        from mmsa_ray.labels import EMOTIONS

        assert len(row["emotion_probs"]) == len(EMOTIONS) == 7 and abs(sum(row["emotion_probs"]) - 1) < 1e-4, row
        assert row["emotion"] in EMOTIONS and row["modalities"] == ["text", "audio", "video"], row
    finally:
        down = head.serve("shutdown", "-y", "-a", head.dashboard)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert not _serve_status(head).get("applications")
