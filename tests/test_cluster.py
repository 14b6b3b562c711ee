"""cluster.yaml and k8s/ manifests: valid for Ray's launcher / KubeRay / Serve, secure by default.

Offline and fast: no AWS, no Kubernetes. cluster.yaml goes through the same
`prepare_config` + `validate_config` that `ray up` runs before it talks to AWS.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
K8S = ROOT / "k8s"
RAY_IMAGE = "rayproject/ray:2.60.0-py311-gpu"
PRIVATE_PORTS = (8265, 6379, 10001)  # dashboard/jobs API, GCS, Ray client
JOB_MANIFESTS = {"featurize.yaml": "featurize", "train.yaml": "train", "label.yaml": "label"}


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _k8s(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def _ray_cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


# ---------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_ray_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))  # merges aws defaults, as `ray up` does
    validate_config(prepared)  # ray-schema.json + head/min/max checks; raises on error
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_cluster_yaml_raw_matches_schema(cluster):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))


def test_cluster_node_types(cluster):
    types = cluster["available_node_types"]
    assert set(types) == {"head", "gpu_1x", "gpu_8x", "cpu_decode"}
    assert types["head"]["resources"] == {"CPU": 0}, "no work may be scheduled on the head"
    assert types["gpu_1x"]["resources"]["GPU"] == 1
    assert types["gpu_8x"]["resources"]["GPU"] == 8
    assert types["cpu_decode"]["node_config"]["InstanceType"] == "c6i.8xlarge"
    assert "GPU" not in types["cpu_decode"]["resources"]
    for name, t in types.items():
        if name != "head":
            assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]
    assert cluster["docker"]["image"] == RAY_IMAGE


def test_cluster_installs_this_repo(cluster):
    assert cluster["file_mounts"]["~/mmsa_ray"] == "."
    assert any("pip install" in c and "-e ~/mmsa_ray" in c for c in cluster["setup_commands"])
    excluded = set(cluster["rsync_exclude"])
    assert {".git", ".venv", "runs", "sample_data"} <= excluded


def _world_open(rule: dict) -> bool:
    return any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
        r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
    )


def _ports(rule: dict) -> range:
    if rule.get("IpProtocol") == "-1":
        return range(0, 65536)
    return range(rule["FromPort"], rule["ToPort"] + 1)


def test_only_serve_port_is_public(cluster):
    extra = cluster["provider"]["security_group"]["IpPermissions"]
    # What the launcher will authorize: its defaults (all traffic within the group, SSH from
    # anywhere) followed by ours. The real function needs boto3 (not a dependency here).
    try:
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules
    except ImportError:
        def _create_default_inbound_rules(sgids, extended_rules):
            intra = {"FromPort": -1, "ToPort": -1, "IpProtocol": "-1",
                     "UserIdGroupPairs": [{"GroupId": g} for g in sorted(sgids)]}
            ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            return [intra, ssh, *extended_rules]
    rules = _create_default_inbound_rules({"sg-self"}, extra)
    public = {p for r in rules if _world_open(r) for p in _ports(r)}
    assert public == {22, 8000}, f"world-open ports: {sorted(public)[:10]}"  # 22: launcher SSH, key-only
    assert [(_ports(r).start, _ports(r).stop - 1) for r in extra if _world_open(r)] == [(8000, 8000)]
    for port in PRIVATE_PORTS:
        assert port not in public


def test_token_auth_on_every_node(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cluster[key] if "ray start" in c]
        assert starts, key
        for cmd in starts:
            assert "RAY_AUTH_MODE=token" in cmd, f"{key}: {cmd}"
    # one shared token: every node gets the laptop's ~/.ray/auth_token, and setup fails without it
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("test -s ~/.ray/auth_token" in c for c in cluster["setup_commands"])


# ---------------------------------------------------------------- k8s/


@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_k8s_manifest_is_valid_yaml_with_known_kind(name):
    doc = _k8s(name)
    assert (doc["apiVersion"], doc["kind"]) in {
        ("ray.io/v1", "RayJob"),
        ("ray.io/v1", "RayService"),
        ("v1", "PersistentVolumeClaim"),
    }, name
    assert doc["metadata"]["name"].startswith("mmsa-")


@pytest.mark.parametrize("name", sorted([*JOB_MANIFESTS, "serve.yaml"]))
def test_k8s_ray_cluster_token_auth_and_gpus(name):
    doc = _k8s(name)
    spec = _ray_cluster_spec(doc)
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for c in group["template"]["spec"]["containers"]:
            limits = c["resources"]["limits"]
            if "nvidia.com/gpu" in limits:
                gpu_groups.append(group["groupName"])
                assert int(limits["nvidia.com/gpu"]) >= 1
                assert c["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
    assert gpu_groups, f"{name}: no GPU worker group"
    images = {
        c["image"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    }
    assert len(images) == 1, images  # head and workers must run the same Ray + code


@pytest.mark.parametrize("name,module", sorted(JOB_MANIFESTS.items()))
def test_k8s_job_entrypoints_name_existing_job_files(name, module):
    doc = _k8s(name)
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{module}.py"]
    assert (ROOT / argv[1]).is_file()
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) == {"working_dir": "/home/ray/mmsa_ray"}


@pytest.mark.parametrize("name", sorted(JOB_MANIFESTS))
def test_k8s_job_flags_exist_in_module_cli(name):
    """Every --flag a manifest passes is one the job's own argparse knows."""
    argv = shlex.split(_k8s(name)["spec"]["entrypoint"])
    out = subprocess.run(
        [sys.executable, argv[1], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in (a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")):
        assert flag in out.stdout, f"{name}: {flag} not in `python {argv[1]} --help`"


def test_k8s_serve_matches_jobs_serve_yaml():
    from ray.serve.schema import ServeDeploySchema

    k8s_config = yaml.safe_load(_k8s("serve.yaml")["spec"]["serveConfigV2"])
    local_config = yaml.safe_load((ROOT / "jobs" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(k8s_config)
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    [k8s_app], [local_app] = k8s_config["applications"], local_config["applications"]
    assert k8s_app["import_path"] == local_app["import_path"] == "mmsa_ray.serve:app"
    assert set(k8s_app["args"]) == set(local_app["args"])  # same knobs; only values may differ
    assert {k: v for k, v in k8s_app["args"].items() if k != "checkpoint"} == {
        k: v for k, v in local_app["args"].items() if k != "checkpoint"
    }


# ---------------------------------------------------------------- job upload


def test_working_dir_upload_is_code_only(tmp_path):
    """What `ray job submit --working-dir .` would zip: no venv, git, runs or sample data, and
    of weights only those the package ships (the uploaded mmsa_ray is the one a job imports)."""
    from ray._private.runtime_env.packaging import create_package

    pkg = tmp_path / "pkg.zip"
    create_package(str(ROOT), pkg, include_gitignore=True)
    names = zipfile.ZipFile(pkg).namelist()
    assert "jobs/label.py" in names and "mmsa_ray/labels.py" in names
    for prefix in (".git/", ".venv/", "runs/", "sample_data/"):
        assert not any(n.startswith(prefix) for n in names), prefix
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    assert weights == [f"mmsa_ray/pretrained/{w}" for w in ("face-models/check.safetensors",
                                                          "face-models/model.safetensors",
                                                          "meld-text/model.safetensors",
                                                          "speaker-encoder/model.safetensors")]
    assert not [n for n in names if n.endswith((".mp4", ".parquet"))]
    assert pkg.stat().st_size < 40 * 2**20, f"{pkg.stat().st_size} bytes"  # the weights are about 30 MB of it
