"""`ray job submit --working-dir <repo> -- python jobs/<name>.py ...` against a real Ray head
with token authentication, exactly as on a cluster (cluster.yaml starts every node with
RAY_AUTH_MODE=token).

One head per module, started with `ray start --head --block` in its own temp dir, HOME and
ports, so it neither sees nor disturbs any other Ray on the machine. It is torn down by
process id (its own process tree), never with `ray stop`, which kills every Ray process on
the machine.

Adding an end-to-end job is one entry in SUBMIT_CASES: argv after `python`, a text its
logs must contain, and optionally an output path (relative to the case's tmp dir) that must
exist afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# A real head, real job uploads and a real labeling job: about a minute on an idle 2-core box.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's `ray` and `python`


def _have(module: str) -> bool:
    return importlib.util.find_spec(f"mmsa_ray.{module}") is not None


@dataclass
class SubmitCase:
    id: str
    argv: list[str]                 # after `python`; "{tmp}" is replaced by the case's tmp dir
    expect_in_logs: str
    output: str | None = None       # a path under {tmp} the job must have written
    module: str | None = None       # skip while mmsa_ray.<module> does not exist yet
    fixtures: list[str] = field(default_factory=list)  # pytest fixtures formatted into argv


SUBMIT_CASES = [
    *(
        SubmitCase(f"{m}-help", [f"jobs/{m}.py", "--help"], f"usage: mmsa-ray {m}", module=m)
        for m in ("featurize", "train", "evaluate", "label")
    ),
    # Real work on the embedded defaults: the tiny checkpoint labels the synthetic test split.
    SubmitCase(
        "label-sample",
        ["jobs/label.py", "{sample_root}/output_repeated_splits_test", "--checkpoint", "{tiny_checkpoint}",
         "--output", "{tmp}/labels", "--actors", "1,1", "--decode-cpus", "0.5", "--cpus-per-actor", "0.5"],
        "",
        output="labels",
        module="label",
        fixtures=["sample_root", "tiny_checkpoint"],
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment minus anything Ray: the session's own local Ray (or a
    developer's shell) must not leak its address, auth mode or token into the head."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),                       # no ~/.ray/auth_token unless we write one
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process, from /proc."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        procs[int(d.name)] = (ppid, argv)
    return procs


def _descendants(pid: int) -> set[int]:
    procs, found, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (ppid, _) in procs.items() if ppid == parent and p not in found]
        found.update(children)
        todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _stop(proc: subprocess.Popen, root: str) -> None:
    """Stop the head: SIGTERM to `ray start --block` (it shuts its node down), then SIGKILL
    to whatever of its own process tree, or anything running out of its temp dir, is left.
    By process id only: `ray stop` would kill every Ray process on the machine."""
    tree = _descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    strays = {p for p, (_, argv) in _processes().items() if any(root in a for a in argv)}
    _kill({p for p in tree if _alive(p)} | strays, signal.SIGKILL)


@pytest.fixture(scope="module")
def head():
    if not sys.platform.startswith("linux"):
        pytest.skip("the head is torn down through /proc")
    root = tempfile.mkdtemp(prefix="mmsa-rj-")   # short: Ray's socket paths must fit 107 bytes
    home = Path(root) / "home"
    home.mkdir()
    token_path = Path(root) / "auth_token"
    token = secrets.token_hex(32)                 # what `ray get-auth-token --generate` writes
    token_path.write_text(token)
    token_path.chmod(0o600)
    base_env = _clean_env(home)
    dash = _free_port()
    head_env = dict(base_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    log = open(Path(root) / "ray-start.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block",
         f"--port={_free_port()}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
         "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={root}/ray", "--disable-usage-stats"],
        env=head_env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (Path(root) / "ray-start.log").read_text()[-3000:]
            try:
                req = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Ray head did not come up in 120 s"
            time.sleep(1)
        yield Head(address, token, home, base_env)
    finally:
        _stop(proc, root)
        log.close()


def test_submit_with_token_runs_the_job(head):
    out = head.submit("ok-1", ["-c", "import sys, pathlib; print('cwd-has-jobs', pathlib.Path('jobs/label.py').is_file())"])
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
    if _have("label"):
        argv = ["jobs/label.py", "/nonexistent/videos", "--checkpoint", "/nonexistent/ckpt", "--output", str(tmp_path / "o")]
        error = "/nonexistent/ckpt"
    else:
        argv = ["-c", "import sys; sys.exit('boom: bad input /nonexistent')"]
        error = "boom: bad input /nonexistent"
    out = head.submit("fail-1", argv)
    assert out.returncode != 0
    info = head.info("fail-1")
    assert info["status"] == "FAILED", info
    assert "exit code" in info["message"], info["message"]
    assert error in head.logs("fail-1")
    assert not (tmp_path / "o").exists()


def _cases():
    for c in SUBMIT_CASES:
        have = c.module is None or _have(c.module)
        yield pytest.param(c, id=c.id, marks=[] if have else pytest.mark.skip(reason=f"mmsa_ray.{c.module} not written yet"))


@pytest.fixture(scope="module")
def submitted(head, tmp_path_factory, request) -> dict[str, tuple[str, Path]]:
    """Every runnable case submitted at once (--no-wait): the jobs' start-up overlaps.
    case id -> (submission id, the case's tmp dir)."""
    selected = {  # only the cases this pytest run collected (-k, node ids)
        item.callspec.params["case"].id
        for item in request.session.items
        if "case" in getattr(getattr(item, "callspec", None), "params", {})
    }
    jobs = {}
    for case in SUBMIT_CASES:
        if case.id not in selected or (case.module is not None and not _have(case.module)):
            continue
        tmp = tmp_path_factory.mktemp(case.id)
        values = {"tmp": str(tmp), **{f: str(request.getfixturevalue(f)) for f in case.fixtures}}
        sid = f"case-{case.id}"
        argv = [a.format(**values) for a in case.argv]
        jobs[case.id] = (sid, tmp, head.submit(sid, argv, wait=False, background=True))
    for sid, _, proc in jobs.values():  # the CLIs ran side by side; each must have been accepted
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{sid}: {out[-2000:]}{err[-2000:]}"
    return {case_id: (sid, tmp) for case_id, (sid, tmp, _) in jobs.items()}


@pytest.mark.parametrize("case", _cases())
def test_submit_job(head, submitted, case: SubmitCase):
    sid, tmp = submitted[case.id]
    info = head.wait(sid)
    logs = head.logs(sid)
    assert info["status"] == "SUCCEEDED", f"{info['message']}\n{logs[-3000:]}"
    assert case.expect_in_logs in logs
    if case.output is not None:
        assert (tmp / case.output).exists(), f"{case.output} not written"
