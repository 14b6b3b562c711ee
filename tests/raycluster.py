"""A Ray cluster of several nodes on this one machine, for the tests that need a real head
(jobs, token auth) or several nodes (multinode): each node is its own `ray start --block`
with its own logical CPUs and a custom resource named after it, all with token
authentication as cluster.yaml starts them.

Everything is started and stopped by process id (the node's own process tree, and anything
running out of the cluster's temp dir), never with `ray stop`, which kills every Ray process
on the machine. Clients (drivers, `ray job submit`) are other processes: the test process
may hold a Ray of its own (conftest's ray_local).
"""

from __future__ import annotations

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

BIN = Path(sys.executable).parent  # the venv's `ray`, `serve` and `python`
OBJECT_STORE = 512 * 1024**2  # bytes per node: three nodes' defaults would claim most of /dev/shm
# The GCS probes each raylet every period and calls a node dead after 5 failed probes in a row: Ray's
# default period (3 s) takes 15 s to see a killed node, 1 s takes 5 s. A probe still waits up to its
# default 10 s for a busy raylet's answer, so a loaded machine does not lose live nodes.
HEAD_HEALTH_CHECK = {"RAY_health_check_period_ms": "1000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment minus anything Ray: the session's own local Ray (or a
    developer's shell) must not leak its address, auth mode or token into the cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),                       # no ~/.ray/auth_token unless we write one
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def processes() -> dict[int, tuple[int, list[str]]]:
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


def descendants(pid: int) -> set[int]:
    procs, found, todo = processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (ppid, _) in procs.items() if ppid == parent and p not in found]
        found.update(children)
        todo.extend(children)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_tree(proc: subprocess.Popen, root: str | None = None) -> None:
    """Stop one node: SIGTERM to its `ray start --block` (it shuts the node down), then
    SIGKILL to whatever of its process tree (or, with `root`, anything running out of that
    temp dir) is left."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    strays = {p for p, (_, argv) in processes().items() if any(root in a for a in argv)} if root else set()
    kill({p for p in tree if alive(p)} | strays, signal.SIGKILL)


@dataclass
class Node:
    name: str  # also its custom resource: {"<name>": 1}
    proc: subprocess.Popen  # its `ray start --block`
    log: Path


@dataclass
class LocalCluster:
    """A head (no CPUs of its own unless asked: work lands on the workers) and worker nodes.

    `env()` is a client's environment (the head's address and token); `dashboard` is the
    jobs API address for `ray job submit`."""

    root: Path  # temp dir: tokens, logs, Ray's session files
    token: str
    gcs_address: str  # 127.0.0.1:<port>
    dashboard: str  # http://127.0.0.1:<port>
    base_env: dict[str, str]
    head: Node | None = None
    workers: dict[str, Node] = field(default_factory=dict)

    # ------------------------------------------------------------------ clients

    def env(self, token: str | None = "own", mode: str | None = "token") -> dict[str, str]:
        """A client's environment: the head's address, with its token (default), another, or none."""
        env = dict(self.base_env, RAY_ADDRESS=self.gcs_address)
        if mode is not None:
            env["RAY_AUTH_MODE"] = mode
        if token == "own":
            env["RAY_AUTH_TOKEN"] = self.token
        elif token is not None:
            env["RAY_AUTH_TOKEN"] = token
        return env

    def api(self, path: str, timeout: float = 30) -> dict:
        """GET <dashboard><path> with the token, as JSON."""
        req = urllib.request.Request(f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def alive_nodes(self) -> dict[str, str]:
        """Node id -> the name of its custom resource ("head" for the head), of the nodes alive now."""
        nodes = self.api("/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]
        names = {"head", *self.workers}
        return {n["node_id"]: next((k for k in n["resources_total"] if k in names), "?")
                for n in nodes if n["state"] == "ALIVE"}

    def actor_nodes(self, class_name: str) -> set[str]:
        """The names of the nodes where live actors of this class run (Ray's state API)."""
        actors = self.api("/api/v0/actors?detail=1&limit=10000")["data"]["result"]["result"]
        nodes = self.alive_nodes()
        return {nodes.get(a["node_id"], "?") for a in actors if a["class_name"] == class_name and a["state"] == "ALIVE"}

    def wait_nodes(self, names: set[str], timeout: float = 120) -> None:
        """Until exactly these nodes are alive."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                now = set(self.alive_nodes().values())
            except (OSError, KeyError, ValueError):
                now = set()
            if now == names:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes alive: {sorted(now)}, wanted {sorted(names)} after {timeout} s")
            time.sleep(0.5)

    # ------------------------------------------------------------------ nodes

    def _start(self, name: str, args: list[str], **extra_env: str) -> Node:
        log = self.root / f"{name}.log"
        env = dict(self.base_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.root / "auth_token"),
                   **extra_env)
        proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                                env=env, cwd=self.root, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        return Node(name, proc, log)

    def add_worker(self, name: str, cpus: float, wait: bool = True) -> Node:
        """A worker node with `cpus` logical CPUs and the resource {name: 1}."""
        node = self._start(name, [f"--address={self.gcs_address}", f"--num-cpus={cpus:g}",
                                  f"--resources={json.dumps({name: 1})}", f"--object-store-memory={OBJECT_STORE}",
                                  f"--dashboard-agent-listen-port={free_port()}",
                                  # its own session files, as on its own machine: the nodes' runtime-env agents
                                  # would otherwise clean up one another's job working dirs
                                  f"--temp-dir={self.root}/{name}"])
        self.workers[name] = node
        if wait:
            self.wait_nodes({"head", *self.workers})
        return node

    def node_of(self, pid: int) -> str:
        """The name of the worker node whose process tree holds `pid`."""
        for name, node in self.workers.items():
            if pid in descendants(node.proc.pid):
                return name
        raise LookupError(f"process {pid} runs on no worker node of this cluster")

    def kill_node(self, name: str) -> None:
        """A node dies as a machine does: SIGKILL to its raylet, then to all it leaves behind."""
        node = self.workers.pop(name)
        tree = descendants(node.proc.pid)
        raylets = {p for p in tree if any("raylet" in a for a in processes().get(p, (0, []))[1][:1])}
        assert raylets, f"no raylet under {name}'s ray start ({node.proc.pid})"
        kill(raylets, signal.SIGKILL)
        kill({node.proc.pid, *tree}, signal.SIGKILL)
        node.proc.wait(timeout=10)

    def stop(self) -> None:
        for node in list(self.workers.values()):
            stop_tree(node.proc)
        self.workers.clear()
        if self.head is not None:
            stop_tree(self.head.proc, str(self.root))


def start_cluster(head_cpus: float = 0, workers: dict[str, float] | None = None,
                  timeout: float = 120) -> LocalCluster:
    """A head with token auth (its dashboard and jobs API on loopback) and the named worker
    nodes (name -> logical CPUs); stop it with `.stop()`."""
    root = Path(tempfile.mkdtemp(prefix="mmsa-rc-"))  # short: Ray's socket paths must fit 107 bytes
    home = root / "home"
    home.mkdir()
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes
    (root / "auth_token").write_text(token)
    (root / "auth_token").chmod(0o600)
    port, dash = free_port(), free_port()
    cluster = LocalCluster(root, token, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", clean_env(home))
    cluster.head = cluster._start("head", [
        "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--num-cpus={head_cpus:g}", f"--resources={json.dumps({'head': 1})}", "--include-dashboard=true",
        f"--object-store-memory={OBJECT_STORE}",
        f"--temp-dir={root}/ray"], **HEAD_HEALTH_CHECK)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert cluster.head.proc.poll() is None, cluster.head.log.read_text()[-3000:]
            try:
                cluster.api("/api/version", timeout=5)
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Ray head did not come up in {timeout} s"
            time.sleep(1)
        for name, cpus in (workers or {}).items():  # one at a time: two raylets starting at once time out here
            cluster.add_worker(name, cpus)
    except BaseException:
        cluster.stop()
        raise
    return cluster
