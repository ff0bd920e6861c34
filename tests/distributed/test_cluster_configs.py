"""Every file in cluster/ parses and carries what its tool requires; nothing is exposed publicly."""

import os
import subprocess
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
    "kuberay-networkpolicy.yaml": ["apiVersion", "kind", "metadata.name", "spec.podSelector.matchLabels",
                                   "spec.policyTypes", "spec.ingress"],
}


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_every_yaml_is_covered():
    assert {p.name for p in YAMLS} == set(REQUIRED)


def _load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def _containers(spec):
    """The head's and each worker group's Ray container of a RayClusterSpec."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_parses_has_required_fields_and_opens_with_its_command(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
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


def test_kuberay_token_auth_on_head_and_workers():
    """authOptions makes the operator put RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in every Ray container;
    a container's own env would take precedence, so none may set them."""
    for spec in (_load("kuberay-raycluster.yaml")["spec"], _load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]):
        assert spec["authOptions"]["mode"] == "token"
        assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth needs Ray 2.52+
        containers = _containers(spec)
        assert len(containers) >= 2  # the head and at least one worker group
        for container in containers:
            names = {env["name"] for env in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, container["name"]


def test_ray_up_enables_token_auth_on_every_node():
    doc = _load("ray-cluster.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in doc[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert any(remote.endswith("/.ray/auth_token") for remote in doc["file_mounts"])


def test_no_shared_disk_settings_are_explicit():
    """The CPU-head / GPU-worker clusters have no shared disk: runs name their storage and GPUs."""
    job = _load("kuberay-rayjob.yaml")
    entrypoint = job["spec"]["entrypoint"]
    submit = "\n".join(line for line in (CLUSTER / "submit.sh").read_text().splitlines()
                       if not line.lstrip().startswith("#"))  # the code, not its comments
    for text in (entrypoint, submit):
        assert "gpus_per_worker=" in text and "storage=" in text
    assert "gpus_per_worker=1" in entrypoint and "storage=s3://" in entrypoint
    assert "/mnt/shared" not in entrypoint  # no shared disk to write to
    for spec in (_load("kuberay-raycluster.yaml")["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # the head is CPU only
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"]["limits"]


def _submit(tmp_path, *args, **env):
    """cluster/submit.sh with a `ray` that prints its arguments instead of submitting."""
    (tmp_path / "ray").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (tmp_path / "ray").chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", **env}
    done = subprocess.run(["bash", str(CLUSTER / "submit.sh"), *args], env=env, capture_output=True, text=True)
    return done.returncode, done.stdout.splitlines(), done.stderr


def test_submit_sh_passes_storage_and_gpus_before_the_users_overrides(tmp_path):
    rc, argv, err = _submit(tmp_path, "configs/x.yaml", "workers=2", RAYLSL_STORAGE="s3://bucket/raylsl")
    assert rc == 0, err
    assert argv[argv.index("raylsl"):] == ["raylsl", "train", "configs/x.yaml", "gpus_per_worker=1",
                                          "storage=s3://bucket/raylsl", "workers=2"]
    rc, argv, err = _submit(tmp_path, "sweep", "space.yaml", "--workers-per-trial", "2",
                            RAYLSL_STORAGE="s3://bucket/raylsl", RAYLSL_GPUS_PER_WORKER="")
    assert rc == 0, err
    assert argv[argv.index("raylsl"):] == ["raylsl", "sweep", "space.yaml", "storage=s3://bucket/raylsl",
                                          "--workers-per-trial", "2"]
    rc, argv, err = _submit(tmp_path, "configs/x.yaml")  # the placeholder bucket is refused before submitting
    assert rc == 2 and "RAYLSL_STORAGE" in err and not argv


def _policies():
    docs = yaml.safe_load_all((CLUSTER / "kuberay-networkpolicy.yaml").read_text())
    return {doc["metadata"]["name"]: doc for doc in docs}


def test_network_policy_selects_each_clusters_head_and_workers():
    policies = _policies()
    assert {doc["kind"] for doc in policies.values()} == {"NetworkPolicy"}
    cluster = _load("kuberay-raycluster.yaml")
    job = _load("kuberay-rayjob.yaml")
    job_spec = job["spec"]["rayClusterSpec"]
    # KubeRay names the RayJob's cluster <name>-<random>: its pods are selected by the label its templates set.
    job_label = job_spec["headGroupSpec"]["template"]["metadata"]["labels"]
    assert all(group["template"]["metadata"]["labels"] == job_label for group in job_spec["workerGroupSpecs"])
    clusters = {"ray.io/cluster": cluster["metadata"]["name"]}, job_label
    for cluster_label in clusters:
        for node_type in ("head", "worker"):
            wanted = {**cluster_label, "ray.io/node-type": node_type}
            selected = [doc for doc in policies.values() if doc["spec"]["podSelector"]["matchLabels"] == wanted]
            assert len(selected) == 1, (cluster_label, node_type)
            spec = selected[0]["spec"]
            assert "Ingress" in spec["policyTypes"]
            # The cluster's own pods reach every port (GCS, raylets, object managers, worker ports).
            own = {"from": [{"podSelector": {"matchLabels": cluster_label}}]}
            assert own in spec["ingress"]
            others = [rule for rule in spec["ingress"] if rule != own]
            assert all(rule.get("ports") for rule in others)  # anyone else: named ports only
            ports = {port["port"] for rule in others for port in rule["ports"]}
            # Submitters reach the head's job API and Ray client, nothing else; workers admit no one else.
            assert ports == ({8265, 10001} if node_type == "head" else set()), (cluster_label, node_type)


def test_network_policy_has_no_rule_open_to_everyone():
    for name, doc in _policies().items():
        rules = doc["spec"]["ingress"]
        assert rules, name  # no rules under policyTypes Ingress: nothing reaches the pods, not even each other
        for rule in rules:
            assert rule.get("from"), (name, rule)  # no `from` = every source
            for peer in rule["from"]:
                assert "ipBlock" not in peer, (name, peer)
                # an empty selector matches every pod (or namespace); namespaceSelector alone admits whole namespaces
                assert peer.get("podSelector", {}).get("matchLabels"), (name, peer)
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"].get("matchLabels"), (name, peer)


def _pip_requirements() -> dict[str, list[str]]:
    """Every package a file in cluster/ installs (or shows how to install), by file."""
    import shlex

    job = _load("kuberay-rayjob.yaml")
    found = {"kuberay-rayjob.yaml": yaml.safe_load(job["spec"]["runtimeEnvYAML"])["pip"]}
    commands = " ".join(_load("ray-cluster.yaml")["setup_commands"])
    installed = shlex.split(commands.split("pip install", 1)[1])
    found["ray-cluster.yaml"] = [arg for arg in installed if not arg.startswith("-")]
    shown = [line[2:] for line in (CLUSTER / "runtime_env.yaml").read_text().splitlines() if line.startswith("# pip:")]
    found["runtime_env.yaml"] = yaml.safe_load(shown[0])["pip"]
    return found


def test_runtime_envs_install_the_versions_of_the_projects_constraints():
    constraints = dict(line.split("==") for line in (CLUSTER.parent / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
    for name, requirements in _pip_requirements().items():
        assert requirements, name
        for requirement in requirements:
            package, _, version = requirement.partition("==")
            package = package.split("[")[0]
            assert version and version == constraints.get(package), (name, requirement)


def test_an_eight_gpu_node_group_for_large_models():
    """One Ray Train worker per GPU on an 8-GPU node (workers=8 gpus_per_worker=1): both cluster
    files have such a group, and the 70B config is laid out for it."""
    from raylsl.plan import load_run_config

    doc = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert doc["available_node_types"]["gpu8_worker"]["resources"]["GPU"] == 8
    groups = {g["groupName"]: g for g in yaml.safe_load((CLUSTER / "kuberay-raycluster.yaml").read_text())["spec"]
              ["workerGroupSpecs"]}
    assert groups["gpu8"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    config = load_run_config(CLUSTER.parent / "configs" / "llama-3.1-70b-zero3.yaml")
    assert (config.workers, config.gpus_per_worker, config.deepspeed) == (8, 1.0, "zero3")
