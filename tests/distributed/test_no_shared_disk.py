"""A cluster whose worker node sees none of the driver's disk, with S3 storage (see `two_node`).

The driver (``raylsl`` run as a user runs it, with ``RAY_ADDRESS``) sits on a head with no CPUs, so
every Ray Train worker and every Tune trial runs on the other node, which has a tmpfs over the
driver's output directory, data and raylsl cache. Everything that reaches the driver came through
Ray (the plan in ``train_loop_config``, reports, checkpoints in the bucket).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_task
from tests.distributed.two_node import VENV_BIN, S3Server, TwoNodeCluster, can_make_mount_namespaces

import moto.server  # noqa: F401,E402  (the test extra installs it: missing, this module must fail, not skip)
if not can_make_mount_namespaces():
    pytest.skip("needs root and `unshare --mount` to give the worker node its own view of the disk",
                allow_module_level=True)

TRAIN = ["model=tiny-llama", "data.test_size=16", "data.val_size=16", "train.steps=4", "train.batch_size=4",
         "train.warmup_steps=1", "train.checkpoint_every=2", "train.lr=5e-3", "layers=1-3", "workers=2",
         "worker_resources={worker_node: 1}", "--no-progress"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodisk")  # everything the driver writes is under here
    logs = tmp_path_factory.mktemp("nodisk-logs")
    s3 = S3Server(logs)
    env = {**s3.env, "RAYLSL_CACHE": str(root / "cache")}
    try:
        nodes = TwoNodeCluster(hidden=[root], env=env, log_dir=logs)
    except BaseException:
        s3.stop()
        raise
    task = write_task(root / "colours.jsonl")
    # A local model directory and a DeepSpeed JSON file that only the driver can read.
    from raylsl.models import resolve_model

    model, tokenizer = resolve_model("tiny-llama").load()
    model.save_pretrained(root / "my-model")
    tokenizer.save_pretrained(root / "my-model")
    (root / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    yield nodes, s3, root, task
    nodes.stop()
    s3.stop()


def _ok(done: subprocess.CompletedProcess) -> str:
    if done.returncode != 0:
        Path("/tmp/nodisk-failure.log").write_text(done.stdout + "\n---STDERR---\n" + done.stderr)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    return done.stdout


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("name, extra", [
    ("ddp", ["model={root}/my-model", "tracking=tensorboard"]),  # a model directory only the driver has: shipped through Ray
    # a DeepSpeed file only the driver has: read there
    pytest.param("zero2", ["deepspeed={root}/zero2.json", "tracking=mlflow"], marks=pytest.mark.long),
    pytest.param("ist", ["selector=ist", "layers=all", "ist.n_update=2", "ist.interval=2", "ist.probe_batch_size=4"],
                 marks=pytest.mark.long),
])
def test_train_in_workers_with_s3_storage(cluster, name, extra):
    nodes, s3, root, task = cluster
    extra = [item.format(root=root) for item in extra]
    _ok(nodes.raylsl("train", *TRAIN, f"task={task}", f"output_dir={root / 'runs'}", f"name={name}",
                     "storage=s3://raylsl/runs", *extra))
    local = root / "runs" / name
    results = json.loads((local / "results.json").read_text())
    assert results["workers"] == 2 and results["train"]["steps"] == 4
    assert results["after"]["n"] == 16 and results["before"]["n"] == 16  # evaluated in the workers, sharded
    assert len((local / "metrics.jsonl").read_text().splitlines()) == 4  # came back in the checkpoint
    keys = s3.keys(f"runs/{name}/")
    for needed in ("config.yaml", "results.json", "metrics.jsonl", "adapter/adapter_model.safetensors", "run.json"):
        assert f"runs/{name}/{needed}" in keys
    assert any(k.startswith(f"runs/{name}/ray/train/") for k in keys)  # Ray Train's checkpoints in the bucket
    if "tracking=tensorboard" in extra:  # rank 0 wrote the events on the worker node; they came back
        from tests.test_tracking import scalars

        losses = [json.loads(line)["loss"] for line in (local / "metrics.jsonl").read_text().splitlines()]
        assert [v for _, v in scalars(local / "tensorboard", "train/loss")] == pytest.approx(losses, rel=1e-6)
        assert any(k.startswith(f"runs/{name}/tensorboard/events.out.tfevents") for k in keys)
    if "tracking=mlflow" in extra:  # rank 0 logged into its own SQLite store; it came back
        from tests.test_tracking import mlflow_history, mlflow_runs

        uri = f"sqlite:///{local / 'mlflow' / 'mlflow.db'}"
        (run,) = mlflow_runs(uri, "raylsl")
        losses = [json.loads(line)["loss"] for line in (local / "metrics.jsonl").read_text().splitlines()]
        assert [v for _, v in mlflow_history(uri, run.info.run_id, "train/loss")] == pytest.approx(losses, rel=1e-6)
        assert f"runs/{name}/mlflow/mlflow.db" in keys
    if "selector=ist" in extra:
        assert f"runs/{name}/ist.json" in keys and results["dynamic"]["adapter_params_existing"] > 0
    # `raylsl eval` reads the run from storage alone.
    evaluated = json.loads(_ok(nodes.raylsl("eval", f"s3://raylsl/runs/{name}")))
    assert evaluated["acc"] == results["after"]["acc"] and evaluated["adapter"] == f"s3://raylsl/runs/{name}/adapter"


def test_workers_that_cannot_reach_the_storage_say_so_in_one_line(cluster):
    """The issue's first run: no storage= on a cluster whose workers are on another node."""
    nodes, _, root, task = cluster
    done = nodes.raylsl("train", "--smoke", "model=tiny-llama", f"task={task}", f"output_dir={root / 'runs'}",
                        "name=nostorage", "workers=2", "worker_resources={worker_node: 1}", "--no-progress")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and "INFO" not in line]
    assert lines == [f"raylsl: error: the Ray Train workers cannot reach the run's storage {root / 'runs' / 'nostorage'}: "
                     "with workers on other nodes, set storage= to a bucket (s3://bucket/prefix, gs://bucket/prefix) or "
                     "to a path every node mounts (NFS)"], done.stderr[-3000:]
    assert json.loads((root / "runs" / "nostorage" / "run.json").read_text())["status"] == "failed"


def test_a_model_in_storage_is_scored_on_the_worker_node_and_never_loaded_by_the_driver(cluster):
    """The issue's CKA run from a CPU head: the model goes to the bucket (content-addressed: the
    second upload is free), a Ray task on the worker node scores it (the head has no CPU for tasks)
    and the scores come back through Ray; the driver reads the model's config.json and nothing
    else; the worker node fetches the weights once for its scoring tasks and both training workers;
    the scores are cached in the run storage, where the training run's own scoring finds them."""
    nodes, s3, root, task = cluster
    uri = _ok(nodes.raylsl("upload-model", str(root / "my-model"), "s3://raylsl/models")).split()[0]
    assert "already in storage: nothing uploaded" in _ok(nodes.raylsl("upload-model", str(root / "my-model"),
                                                                      "s3://raylsl/models"))
    weights = f"{uri.removeprefix('s3://raylsl/')}/model.safetensors"
    run = [f"model={uri}", "selector=cka", "n=2", f"task={task}", "workers=2", "worker_resources={worker_node: 1}",
           f"output_dir={root / 'runs'}", "storage=s3://raylsl/runs", "data.test_size=16", "data.val_size=16"]
    _ok(nodes.raylsl("select", *run))
    (selected,) = (root / "runs").glob("select-cka-*")
    first = json.loads((selected / "scores.json").read_text())
    ids = nodes.node_ids()
    assert first["placement"]["ray_node"] == ids["worker"] != ids["head"] and not first["cached"]
    assert [k for k in s3.keys("runs/score-cache/") if k.endswith(".json")]

    _ok(nodes.raylsl("train", *run, "name=cka-from-s3", "train.steps=2", "train.batch_size=4", "--no-progress"))
    local = root / "runs" / "cka-from-s3"
    again = json.loads((local / "scores.json").read_text())
    assert again["cached"] and again["placement"]["ray_node"] == ids["worker"]
    assert again["layers"] == first["layers"] == json.loads((local / "results.json").read_text())["layers"]
    assert s3.requests("GET", weights) == 1  # once, by the worker node; never by the driver
    assert not list((root / "cache" / "models").glob("stored-*/*.safetensors"))  # the driver's cache: config only


SPACE = """\
base: {base}
set: {{data.val_size: 16, data.test_size: 16, train.steps: 3, train.batch_size: 4, train.checkpoint_every: 1,
       train.eval_every: 2, worker_resources: {{worker_node: 1}}, cpus_per_worker: 1}}
trials: {trials}
workers_per_trial: 2
parameters:
  selector: {{choices: [all, last, activation]}}
  n: {{low: 1, high: 3}}
"""


def _space(root: Path, task: Path, trials: int) -> Path:
    base = root / "base.yaml"
    base.write_text(f"model: tiny-llama\ntask: {task}\nlora: {{r: 4}}\n")
    space = root / f"space-{trials}.yaml"
    space.write_text(SPACE.format(base=base, trials=trials))
    return space


@pytest.mark.long
def test_sweep_in_workers_with_s3_storage_survives_a_killed_driver(cluster, monkeypatch):
    """A 3-trial sweep whose trials each train in 2 Ray Train workers, its storage in the bucket;
    the driver is killed after the first trial finishes and the sweep is resumed from the URI."""
    nodes, s3, root, task = cluster
    for key, value in s3.env.items():  # this process reads the bucket too (report.load below)
        monkeypatch.setenv(key, value)
    driver = subprocess.Popen(
        [str(VENV_BIN / "raylsl"), "sweep", str(_space(root, task, 3)), "storage=s3://raylsl/sweeps", "--output-dir",
         str(root / "sweeps"), "--name", "s3sweep", "--no-progress"],
        env=nodes.driver_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finished = lambda: {k.split("/")[3] for k in s3.keys("sweeps/s3sweep/tune/") if k.endswith("/results.json")}  # noqa: E731
    deadline = time.time() + 600
    while not finished() and time.time() < deadline and driver.poll() is None:
        time.sleep(1)
    assert finished(), driver.communicate()[0][-3000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    before = finished()
    assert len(before) < 3, "the sweep ended before it could be interrupted"

    out = _ok(nodes.raylsl("sweep", "--resume", "s3://raylsl/sweeps/s3sweep", "--no-progress", timeout=900))
    assert "3 trials, 0 failed" in out
    from raylsl import report

    final = report.load("s3://raylsl/sweeps/s3sweep")  # from storage alone
    assert len(final.trials) == 3 and final.complete and (final.trials["status"] == "TERMINATED").all()
    assert before <= finished() and len(finished()) == 3
    assert all(c.startswith("s3://raylsl/sweeps/s3sweep/tune/") for c in final.trials["checkpoint"])
    # the workers' evaluation at step 2 reached Tune (TuneReportCallback), then the trial's final one
    assert all({step for step, _ in json.loads(curve)} == {2, 3} for curve in final.trials["curve"]), final.trials["curve"]
    keys = s3.keys("sweeps/s3sweep/")
    assert "sweeps/s3sweep/optuna.db" in keys and "sweeps/s3sweep/pareto.md" in keys
    assert {k.split("/")[3][:-5] for k in keys if k.startswith("sweeps/s3sweep/test/")} == set(final.pareto_front()["trial_id"])
    assert any("/trials/" in k and "/ray/train/" in k for k in keys)  # the trials' own Ray Train runs
    assert (root / "sweeps" / "s3sweep" / "pareto.png").is_file()  # and the report on the driver
