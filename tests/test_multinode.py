"""Past one machine: the jobs on a Ray cluster of a head and two worker nodes (tests/raycluster.py,
token auth as cluster.yaml), with a worker node killed mid-run as a spot instance dies.

Each node is its own `ray start --block` on this machine with its own logical CPUs and a
custom resource named after it; a node is killed by SIGKILL to its raylet, and everything
is stopped by process id. The drivers are other processes (the test process may hold a Ray
of its own).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import mediagen
import pyarrow.parquet as pq
import pytest
import raycluster
import requests

from mmsa_ray.batch.attempts import ATTEMPTS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
WORKER_CPUS = 2  # logical CPUs per worker node: a model actor and a decode task side by side
# The head has 1 CPU: Ray Data's read tasks run there while Ray Train's workers fill the worker nodes.


@pytest.fixture(scope="module")
def cluster():
    if not sys.platform.startswith("linux"):
        pytest.skip("the nodes are torn down through /proc")
    c = raycluster.start_cluster(head_cpus=1, workers={"node_a": WORKER_CPUS, "node_b": WORKER_CPUS})
    try:
        yield c
    finally:
        c.stop()


def _driver(cluster: raycluster.LocalCluster, argv: list[str], log: Path) -> subprocess.Popen:
    """`mmsa-ray <argv>` as a driver of the cluster (its address and token in the environment)."""
    return subprocess.Popen([sys.executable, "-m", "mmsa_ray.cli", *argv], env=cluster.env(), cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def _restore(cluster: raycluster.LocalCluster) -> None:
    """Both worker nodes up again, for the next test, whatever this one killed."""
    for name in sorted({"node_a", "node_b"} - set(cluster.workers)):
        cluster.add_worker(name, WORKER_CPUS)


def _replace_node_then_finish(cluster: raycluster.LocalCluster, node: str, proc: subprocess.Popen, log: Path,
                              timeout: float) -> None:
    """SIGKILL `node` as a machine dies; once the cluster has seen the death, a node of the same
    name comes back (as an autoscaler or a spot pool replaces it); then the driver must finish."""
    cluster.kill_node(node)
    cluster.wait_nodes({"head", *cluster.workers})
    cluster.add_worker(node, WORKER_CPUS)
    assert proc.wait(timeout) == 0, log.read_text()[-4000:]


@contextmanager
def _driving(cluster: raycluster.LocalCluster, proc: subprocess.Popen):
    """Kill the driver if the test leaves it running; both worker nodes are up again afterwards."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _restore(cluster)


def _rows(out: Path) -> list[dict]:
    files = [p for p in out.glob("*.parquet") if p.name[0] not in "._"]
    return [r for p in files for r in pq.read_table(p, columns=["id", "error"]).to_pylist()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Eight short clips (video and audio): enough that a node dies with work left."""
    d = tmp_path_factory.mktemp("archive")
    made = mediagen.clips(d / "made")
    kinds = [p for p in made.values() if p.suffix in (".mp4", ".wav")]
    for i in range(8):
        src = kinds[i % len(kinds)]
        shutil.copy(src, d / f"clip{i:02d}{src.suffix}")
    shutil.rmtree(d / "made")
    return d


def _decoding(cluster: raycluster.LocalCluster, out: Path, prefix: str) -> tuple[str, str] | None:
    """(worker node, item id) of an item (id starting with `prefix`) that a worker node is
    decoding now: its attempt record names the pid."""
    for record in (out / ATTEMPTS_DIR).glob("*.json"):
        try:
            item = json.loads(record.read_text())
            if item["id"].startswith(prefix):
                return cluster.node_of(item["pid"]), item["id"]
        except (OSError, ValueError, KeyError, LookupError):  # gone, half written, or on the head
            continue
    return None


def _readme_blocks(section: str) -> list[str]:
    """The ```bash blocks of the README section whose heading starts with `section`."""
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"\n### {section}"):]
    body = body[:body.index("\n## ", 1)]
    body = body[:body.index("\n### ", 1)] if "\n### " in body[1:] else body
    return [b.split("```", 1)[0] for b in body.split("```bash\n")[1:]]


def test_readme_cluster_by_hand_starts_three_nodes_and_stops_by_pid(tmp_path):
    """README "From laptop to cluster", section 6: the start block and the stop block run in
    bash as they are written (the venv's `ray` and `python` on PATH, no Ray variables of this
    session): three nodes with token auth and the custom resources; the kill stops every
    process of the three."""
    start, stop = _readme_blocks("6. Several nodes on one machine")
    env = raycluster.clean_env(tmp_path)
    started = subprocess.run(["bash", "-c", start], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        status = started.stdout
        # the custom resources' lines (" node_a" alone would also match a node id that starts with "a")
        assert re.search(r"\b5\.0 CPU\b", status) and all(re.search(rf"/1\.0 {n}$", status, re.M)
                                                            for n in ("node_a", "node_b")), status
        assert "Active:" in status and len(re.findall(r"^ 1 node_[0-9a-f]{20,}$", status, re.M)) == 3, status
        # token auth is on: a client without the token is refused
        no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run([str(raycluster.BIN / "ray"), "status", "--address", "127.0.0.1:6380"],
                                 env=no_token, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0, refused.stdout[-2000:]
    finally:
        pids = [int(p.read_text()) for p in Path("/tmp/mn").glob("*.pid")]
        trees = {q for p in pids for q in raycluster.descendants(p)} | set(pids)
        stopped = subprocess.run(["bash", "-c", stop], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        deadline = time.monotonic() + 30
        while any(raycluster.alive(p) for p in trees) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p for p in trees if raycluster.alive(p)}
        raycluster.kill(left, signal.SIGKILL)  # never leave a cluster behind, even when the test fails
    assert stopped.returncode == 0, stopped.stderr
    assert len(pids) == 3 and not left, f"still running after the README's kill: {sorted(left)}"


def test_label_survives_a_worker_node_killed_mid_run(cluster, archive, tiny_checkpoint, tmp_path):
    """label across two worker nodes, OUT as a file:// URI (the cloud code path on storage
    every node sees); the worker node that is decoding a long file is killed, and a node
    comes back in its place once the death is seen (as an autoscaler or a spot pool replaces
    it): the actors that were on it restart there, the decode is retried and counted as such,
    and the run ends with every item exactly once and no error."""
    src = tmp_path / "in"
    shutil.copytree(archive, src)
    for i in range(3):  # 300 s of audio: about a second to decode, time to be caught at it
        mediagen.write_audio(src / f"long{i}.wav", 300.0, 48000, 2)
    out = tmp_path / "labels"
    log = tmp_path / "label.log"
    proc = _driver(cluster, ["label", str(src), "--checkpoint", str(tiny_checkpoint), "--output",
                             f"file://{out}", "--batch-size", "1", "--decode-batch-size", "1",
                             "--rows-per-file", "1"], log)
    with _driving(cluster, proc):
        node, caught = _wait(lambda: _decoding(cluster, out, "long"), 300, "a long decode on a worker node", proc,
                             log)
        _replace_node_then_finish(cluster, node, proc, log, 400)
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(p.name for p in src.iterdir()), log.read_text()[-3000:]
    assert [r for r in rows if r["error"]] == []
    printed = log.read_text()
    assert "labeled 11, failed 0" in printed, printed[-3000:]
    assert caught in ids and "items were worked on again after the worker on them died" in printed, printed[-3000:]



def test_label_utterances_transcribe_nothing_twice_when_a_node_dies(cluster, tiny_checkpoint, tmp_path):
    from test_utterances import cache_files  # {speech cache file: mtime_ns} under OUT

    """label with speech recognition across the worker nodes (--utterances on, two speech
    actors): once one file's speech is done, the node transcribing another is killed and comes
    back. The files already done are not transcribed again (their results, written before their
    rows move on, are never rewritten), the one cut short is, and every utterance is a row once."""
    src = tmp_path / "talks"
    src.mkdir()
    for i in range(4):  # 4 talks of about 30 s: two rounds for two speech actors
        wave, _ = mediagen.spoken(mediagen.TALK_SENTENCES[4 * i:4 * i + 4] * 2, rate=16000, gap_s=1.0)
        mediagen.write_audio(src / f"talk{i}.wav", rate=16000, channels=1, samples=wave[None])
    out, log = tmp_path / "labels", tmp_path / "label.log"
    proc = _driver(cluster, ["label", str(src), "--checkpoint", str(tiny_checkpoint), "--utterances", "on",
                             "--asr-actors", "2,2", "--speakers", "off", "--faces", "off",
                             "--output", f"file://{out}"], log)
    with _driving(cluster, proc):
        def transcribing_after_one_is_done():
            done = cache_files(out)
            busy = _decoding(cluster, out, "speech:") if done else None
            return (busy, done) if busy else None
        (node, item), done = _wait(transcribing_after_one_is_done, 400, "a talk transcribed and another in progress",
                                   proc, log)
        _replace_node_then_finish(cluster, node, proc, log, 400)
    after = cache_files(out)
    assert 1 <= len(done) < 4, done  # the kill cut a transcription short, with another already done
    assert len(after) == 4 and {k: after[k] for k in done} == done, (done, after)  # done before the kill: kept
    rows = _rows(out)
    assert [r for r in rows if r["error"]] == [] and len({r["id"] for r in rows}) == len(rows)
    assert {r["id"].split("#")[0] for r in rows} == {p.name for p in src.iterdir()}
    assert item.removeprefix("speech:") in {r["id"].split("#")[0] for r in rows}
    printed = log.read_text()
    assert "worked on again after the worker on them died" in printed, printed[-3000:]

# A training driver of the cluster: the sample MELD data, text alone (frozen MiniLM, cached features), two
# Ray Train workers that each need a whole worker node (2 CPUs), so they run on different nodes.
TRAIN_DRIVER = """
import json, sys
import ray
from mmsa_ray.media import DecodeConfig
from mmsa_ray.model import ModelConfig
from mmsa_ray.train import driver as train

a = json.loads(sys.argv[1])
ray.init()
job = train.JobConfig(meld_dir=a["meld"], output=a["output"], storage_path=a["storage"], name=a["name"],
                      num_workers=2, cpus_per_worker=2, max_failures=1, cache_dir=a["cache"], limit=42)
cfg = train.TrainConfig(modalities=("text",), epochs=3, batch_size=8, lr=3e-3, encoder_lr=3e-3, patience=0, seed=0,
                        shuffle_buffer=0, deterministic=True, pid_dir=a["pids"])
res = train.run(job, cfg, ModelConfig(decode=DecodeConfig(num_frames=8, height=64, width=64), modalities=("text",)))
print("RESULT " + json.dumps({"history": res["history"], "best": res["best_metrics"]}))
"""


def _train(cluster: raycluster.LocalCluster, tmp: Path, name: str, sample_root: Path) -> tuple[subprocess.Popen, Path]:
    args = {"meld": str(sample_root), "output": str(tmp / name / "model"), "storage": str(tmp / "store"),
            "name": name, "cache": str(tmp / "cache"), "pids": str(tmp / name / "pids")}
    log = tmp / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_DRIVER, json.dumps(args)], env=cluster.env(), cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, log


def _result(log: Path) -> dict:
    lines = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    assert lines, log.read_text()[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_train_resumes_from_its_checkpoint_when_a_workers_node_dies(cluster, sample_root, tmp_path):
    """2 Ray Train workers (gloo) on the two worker nodes, checkpoints in shared storage: the
    node of rank 1 is killed once epoch 1's checkpoint is written and a node comes back in its
    place; with max_failures=1 the run resumes from that checkpoint, trains each epoch once, and
    ends with the dev scores of an undisturbed run of the same seed."""
    proc, log = _train(cluster, tmp_path, "calm", sample_root)
    assert proc.wait(600) == 0, log.read_text()[-4000:]
    calm = _result(log)

    proc, log = _train(cluster, tmp_path, "killed", sample_root)
    pids, run_dir = tmp_path / "killed" / "pids", tmp_path / "store" / "killed"
    with _driving(cluster, proc):
        _wait(lambda: (run_dir / "epoch_001").is_dir() and (pids / "rank1.pid").is_file(), 600,
              "epoch 1's checkpoint", proc, log)
        pid = int((pids / "rank1.pid").read_text())
        nodes = {cluster.node_of(pid), cluster.node_of(int((pids / "rank0.pid").read_text()))}
        assert nodes == {"node_a", "node_b"}, nodes  # one worker per node
        node = cluster.node_of(pid)
        _replace_node_then_finish(cluster, node, proc, log, 600)
    killed = _result(log)
    assert int((pids / "rank1.pid").read_text()) != pid, "rank 1 was not restarted"
    assert [h["epoch"] for h in killed["history"]] == [1, 2, 3]  # resumed, not restarted: each epoch once
    for key in ("dev_emotion_accuracy", "dev_sentiment_accuracy"):
        assert abs(killed["best"][key] - calm["best"][key]) <= 0.05, (key, calm["best"], killed["best"])


class _Traffic:
    """A steady stream of requests (two clients posting a clip and a transcript in a loop)
    and a /healthz poll every 0.5 s, each recorded with its time."""

    def __init__(self, base: str, clip: Path):
        self.base, self.clip = base, clip
        self.answers: list[tuple[float, int, float]] = []  # (time sent, status or -1, seconds)
        self.health: list[tuple[float, int, dict]] = []  # (time, status or -1, body)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, daemon=True) for _ in range(2)]
        self._threads.append(threading.Thread(target=self._watch, daemon=True))

    def _post(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                r = requests.post(f"{self.base}/v1/predict", data={"transcript": "I can't believe it worked!"},
                                  files={"file": ("clip.mp4", self.clip.read_bytes(), "video/mp4")}, timeout=60)
                code = r.status_code
            except requests.RequestException:
                code = -1  # no answer at all
            self.answers.append((t0, code, time.monotonic() - t0))

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                r = requests.get(f"{self.base}/healthz", timeout=10)
                self.health.append((time.monotonic(), r.status_code, r.json()))
            except requests.RequestException:
                self.health.append((time.monotonic(), -1, {}))
            time.sleep(0.5)

    def status_since(self, t: float, *statuses: str) -> bool:
        return any(h[0] > t and h[2].get("status") in statuses for h in self.health)

    def __enter__(self) -> _Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(70)


def test_serve_keeps_answering_when_a_node_dies(cluster, archive, tiny_checkpoint, tmp_path):
    """Serve with two model and two ingress replicas over the nodes (the HTTP proxy on the
    head); a worker node with a model replica is killed under a steady stream of requests:
    few requests fail, none
    hangs past the request timeout, and /healthz says "degraded" (the replicas left answer;
    the lost ones wait for room: each reserved its share of the whole cluster) until a node
    comes back in its place, then "ok" with every replica running again."""
    port, timeout_s = raycluster.free_port(), 20
    log = tmp_path / "serve.log"
    proc = _driver(cluster, ["serve", "--checkpoint", str(tiny_checkpoint), "--port", str(port),
                             "--proxy-location", "HeadOnly", "--min-replicas", "2", "--max-replicas", "2",
                             "--ingress-replicas", "2", "--request-timeout-s", str(timeout_s), "--faces", "off"], log)
    try:
        _wait(lambda: "mmsa-ray serve: page" in log.read_text(), 300, "Serve to be ready", proc, log)
        with _Traffic(f"http://127.0.0.1:{port}", next(archive.glob("*.mp4"))) as traffic:
            time.sleep(8)
            node = min(cluster.actor_nodes("ServeReplica:mmsa:Model") & set(cluster.workers))
            t_kill = time.monotonic()
            cluster.kill_node(node)
            _wait(lambda: traffic.status_since(t_kill, "degraded", "unavailable"), 120, "/healthz to show the loss",
                  proc, log)
            time.sleep(5)  # requests go on to the replicas left
            t_back = time.monotonic()
            cluster.add_worker(node, WORKER_CPUS)
            _wait(lambda: traffic.status_since(t_back, "ok"), 180, "/healthz to show the recovery", proc, log)
            time.sleep(3)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _restore(cluster)
    answers, health = traffic.answers, traffic.health
    before = [a for a in answers if a[0] + a[2] < t_kill]  # answered before the kill
    during = [a for a in answers if a[0] + a[2] >= t_kill]
    failed = [a for a in during if a[1] != 200]
    print(f"serve across nodes: {len(before)} requests answered before the kill ({[a[1] for a in before]}); "
          f"{len(during)} after, {len(failed)} failed ({100 * len(failed) / max(1, len(during)):.0f}%: "
          f"{sorted(a[1] for a in failed)})")
    assert before and all(a[1] == 200 for a in before)
    assert len(during) >= 10 and len(failed) <= 0.2 * len(during), failed
    assert max(a[2] for a in answers) <= timeout_s + 10  # nothing hangs past the request timeout
    assert all(a[1] in (200, 500, 503, 504) for a in failed), failed
    assert health[-1][2]["status"] == "ok"
    assert health[-1][2]["replicas"] == next(h[2]["replicas"] for h in health if h[0] < t_kill)


def test_jobs_submitted_with_the_token_run_across_the_nodes(cluster, archive, tiny_checkpoint, tmp_path):
    """`ray job submit` to the cluster's head: without the token refused, nothing created; with
    it, a label job on the cluster, every clip a row. (A train job submitted the same way is
    test_jobs_submit's, on one node; Ray Train's workers on two nodes are the node-death train
    test's.)"""
    from test_jobs_submit import Head

    head = Head(cluster.dashboard, cluster.token, cluster.root / "home", cluster.base_env)
    refused = head.submit("mn-refused", ["-c", "print('must not run')"], env=head.env(token=None, mode=None))
    assert refused.returncode != 0 and head.info("mn-refused") is None
    argv = ["jobs/label.py", str(archive), "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "labels")]
    out = head.submit("mn-label", argv, wait=False)
    assert out.returncode == 0, out.stderr[-2000:]
    info = head.wait("mn-label", timeout=400)
    assert info["status"] == "SUCCEEDED", head.logs("mn-label")[-6000:]
    assert "labeled 8, failed 0" in head.logs("mn-label")
    assert {r["id"] for r in _rows(tmp_path / "labels")} == {p.name for p in archive.iterdir()}
