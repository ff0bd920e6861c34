"""Every file in cluster/ parses and carries what its tool requires; nothing is exposed publicly."""

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).parents[2] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))

REQUIRED = {
    "ray-cluster.yaml": ["cluster_name", "provider.type", "auth.ssh_user", "available_node_types", "head_node_type",
                         "head_start_ray_commands", "worker_start_ray_commands"],
    "kuberay-raycluster.yaml": ["apiVersion", "kind", "metadata.name", "spec.rayVersion", "spec.headGroupSpec.template",
                                "spec.workerGroupSpecs"],
    "kuberay-rayjob.yaml": ["apiVersion", "kind", "metadata.name", "spec.entrypoint",
                            "spec.rayClusterSpec.headGroupSpec.template", "spec.rayClusterSpec.workerGroupSpecs"],
    "runtime_env.yaml": ["excludes", "env_vars"],
}


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_every_yaml_is_covered():
    assert {p.name for p in YAMLS} == set(REQUIRED)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_parses_has_required_fields_and_opens_with_its_command(path):
    doc = yaml.safe_load(path.read_text())
    for key in REQUIRED[path.name]:
        assert _get(doc, key) not in (None, "", [], {}), key
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and any(tool in first for tool in ("ray up", "kubectl apply", "ray job submit"))
    assert "trust_remote_code" not in path.read_text()


def test_kuberay_kinds_and_gpu_workers():
    cluster = yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # internal only
        worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "python -m raylsl train" in job["spec"]["entrypoint"]


def test_ray_up_keeps_dashboard_local_and_has_gpu_workers():
    doc = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    head = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert doc["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1


def test_runtime_env_keeps_the_venv_out():
    doc = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert ".venv/" in doc["excludes"] and ".git/" in doc["excludes"]
