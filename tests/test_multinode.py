"""Past one machine: the jobs on a Ray cluster of a head and two worker nodes (tests/raycluster.py,
token auth as cluster.yaml), with a worker node killed mid-run as a spot instance dies.

Each node is its own `ray start --block` on this machine with its own logical CPUs and a
custom resource named after it; a node is killed by SIGKILL to its raylet, and everything
is stopped by process id. The drivers are other processes (the test process may hold a Ray
of its own).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import mediagen
import pyarrow.parquet as pq
import pytest
import raycluster

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

ROOT = Path(__file__).resolve().parents[1]
WORKER_CPUS = 2  # logical CPUs per worker node: a model actor and a decode task side by side


@pytest.fixture(scope="module")
def cluster():
    if not sys.platform.startswith("linux"):
        pytest.skip("the nodes are torn down through /proc")
    c = raycluster.start_cluster(head_cpus=0, workers={"node_a": WORKER_CPUS, "node_b": WORKER_CPUS})
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


def _rows(out: Path) -> list[dict]:
    files = [p for p in out.glob("*.parquet") if p.name[0] not in "._"]
    return [r for p in files for r in pq.read_table(p, columns=["id", "error"]).to_pylist()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Twelve short clips (video and audio): enough that a node dies with work left."""
    d = tmp_path_factory.mktemp("archive")
    made = mediagen.clips(d / "made")
    kinds = [p for p in made.values() if p.suffix in (".mp4", ".wav")]
    for i in range(12):
        src = kinds[i % len(kinds)]
        shutil.copy(src, d / f"clip{i:02d}{src.suffix}")
    shutil.rmtree(d / "made")
    return d


def test_label_survives_a_worker_node_killed_mid_run(cluster, archive, tiny_checkpoint, tmp_path):
    """label across two worker nodes, OUT as a file:// URI (the cloud code path on storage
    every node sees); node_a is killed once the first rows are written, and a node comes back
    in its place once the death is seen (as an autoscaler or a spot pool replaces it): the
    actors that were on it restart there, the tasks it was running are retried, and the run
    ends with every item exactly once and no error."""
    out = tmp_path / "labels"
    log = tmp_path / "label.log"
    proc = _driver(cluster, ["label", str(archive), "--checkpoint", str(tiny_checkpoint), "--output",
                             f"file://{out}", "--batch-size", "1", "--decode-batch-size", "1",
                             "--rows-per-file", "1"], log)
    try:
        _wait(lambda: len(_rows(out)) >= 2 if out.is_dir() else False, 300, "the first rows", proc, log)
        cluster.kill_node("node_a")
        cluster.wait_nodes({"head", "node_b"})
        cluster.add_worker("node_a", WORKER_CPUS)
        assert proc.wait(400) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if "node_a" not in cluster.workers:  # back for the next test
            cluster.add_worker("node_a", WORKER_CPUS)
    rows = _rows(out)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(p.name for p in archive.iterdir()), log.read_text()[-3000:]
    assert [r for r in rows if r["error"]] == []
    printed = log.read_text()
    assert "labeled 12, failed 0" in printed, printed[-3000:]
