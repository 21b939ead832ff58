"""Cluster configs: launcher YAMLs through Ray's own validation, KubeRay manifests by their fields."""

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_ray_validation(name):
    cfg = prepare_config(load(name))
    validate_config(cfg)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # no work scheduled on the head
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any("gpu" in k for k in workers) and any("cpu" in k for k in workers)
    assert all(v["min_workers"] == 0 for v in workers.values())
    assert cfg["idle_timeout_minutes"] > 0
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start
    assert any("regene-ray" in c for c in cfg["setup_commands"])


def test_fake_multinode_config_passes_ray_schema():
    cfg = load("local-fake.yaml")
    validate_config(cfg)  # complete on its own: the wheel ships no fake-provider defaults
    gpu = cfg["available_node_types"]["ray.worker.gpu"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    assert "GPU" not in cfg["available_node_types"]["ray.head.default"]["resources"]


@pytest.mark.parametrize("breakage", ["unknown_field", "bad_head", "bad_type"])
def test_broken_launcher_config_is_rejected(breakage):
    cfg = copy.deepcopy(load("aws.yaml"))
    if breakage == "unknown_field":
        cfg["available_node_types"]["gpu_worker"]["min_wrokers"] = 0
    elif breakage == "bad_head":
        cfg["head_node_type"] = "nope"
    else:
        cfg["max_workers"] = "ten"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(cfg))


def check_raycluster_spec(spec):
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"gpu", "cpu"} <= set(groups)
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
        assert "rayStartParams" in g and g["template"]["spec"]["containers"][0]["image"]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"


def test_kuberay_raycluster():
    m = load("kuberay/raycluster.yaml")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayCluster"
    assert m["metadata"]["name"]
    assert m["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    check_raycluster_spec(m["spec"])


@pytest.mark.parametrize("name,script", [("rayjob-search.yaml", "jobs/search.py"),
                                         ("rayjob-mass-generate.yaml", "jobs/mass_generate.py")])
def test_kuberay_rayjobs(name, script):
    m = load(f"kuberay/{name}")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob"
    assert m["spec"]["entrypoint"].startswith(f"python {script}")
    assert (CLUSTER.parent / script).is_file()
    check_raycluster_spec(m["spec"]["rayClusterSpec"])


def test_broken_kuberay_manifest_is_rejected():
    m = load("kuberay/raycluster.yaml")
    m["spec"]["workerGroupSpecs"][0].pop("minReplicas")
    with pytest.raises(KeyError):
        check_raycluster_spec(m["spec"])


# doors: token authentication must be on everywhere, with the token distributed, never committed


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_configs_turn_token_auth_on_and_distribute_the_token(name):
    cfg = prepare_config(load(name))
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "./cluster/ray-auth-token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("auth_token" in c for c in cfg["head_setup_commands"])  # fails fast without it
    assert "cluster/ray-auth-token" in (CLUSTER.parent / ".gitignore").read_text()
    assert not (CLUSTER / "ray-auth-token").exists() or \
        "ray-auth-token" not in subprocess.run(["git", "ls-files", "cluster"], cwd=CLUSTER,
                                               capture_output=True, text=True).stdout


def _ray_containers(manifest):
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return spec, [c for g in groups for c in g["template"]["spec"]["containers"]]


def _has_token_env(container):
    env = {e["name"]: e for e in container.get("env", [])}
    return env.get("RAY_AUTH_MODE", {}).get("value") == "token" and \
        env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") \
        == "regene-ray-auth"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-search.yaml",
                                  "rayjob-mass-generate.yaml"])
def test_kuberay_manifests_turn_token_auth_on_and_stay_inside_the_cluster(name):
    m = load(f"kuberay/{name}")
    spec, containers = _ray_containers(m)
    assert containers and all(_has_token_env(c) for c in containers)
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    ports = [p["containerPort"] for c in containers for p in c.get("ports", [])]
    assert 10001 not in ports  # no Ray Client port
    if m["kind"] == "RayJob":
        submitter = m["spec"]["submitterPodTemplate"]["spec"]["containers"]
        assert all(_has_token_env(c) for c in submitter)
