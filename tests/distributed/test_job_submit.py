"""`ray job submit` against a local head that this test starts and stops (by PID, not `ray stop`)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
DASHBOARD = "http://127.0.0.1:8297"


@pytest.fixture
def local_head(tmp_path):
    pytest.importorskip("ray")
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    from tests.distributed.two_node import free_port

    # Its own dashboard-agent port: the default (52365) is taken while another Ray of the suite
    # lives on this machine, and a head whose agent cannot bind accepts no job.
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--port=6397", "--dashboard-port=8297",
                             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
                             f"--dashboard-agent-listen-port={free_port()}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while subprocess.run([ray_cli, "job", "list", "--address", DASHBOARD], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            time.sleep(2)
        yield ray_cli, env, lambda: _stop(head)
    finally:
        _stop(head)


def _stop(head: subprocess.Popen) -> None:
    if head.poll() is not None:
        return
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def _submit(ray_cli: str, env: dict, *command: str) -> subprocess.CompletedProcess:
    deadline = time.time() + 120
    while True:
        job = subprocess.run(
            [ray_cli, "job", "submit", "--address", DASHBOARD, "--working-dir", str(REPO),
             "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--", sys.executable, "-m", "raylsl",
             *command],
            env=env, capture_output=True, text=True, timeout=480)
        # The dashboard answers `job list` before the head's job agent has registered; Ray says
        # "No available agent to submit job, please try again later" then, and nothing was submitted.
        if "No available agent to submit job" not in job.stderr or time.time() > deadline:
            break
        time.sleep(3)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "Started a local Ray instance" not in job.stdout + job.stderr  # it ran on the head's cluster
    return job


def test_job_submit_trains_and_sweeps_through_the_cluster(local_head, tmp_path, task_file):
    ray_cli, env, _ = local_head
    out_dir = tmp_path / "runs"
    job = _submit(ray_cli, env, "train", "configs/tiny-smoke.yaml", f"task={task_file}", f"output_dir={out_dir}",
                  "name=job", "workers=2", "--no-progress")
    assert "trainable parameters: 4,096" in job.stdout
    results = json.loads((out_dir / "job" / "results.json").read_text())
    assert results["workers"] == 2 and results["train"]["steps"] == 4

    # The command search_spaces/smoke.yaml opens with, on the same head.
    _submit(ray_cli, env, "sweep", "search_spaces/smoke.yaml", "--smoke", f"task={task_file}",
            "--output-dir", str(out_dir), "--name", "sweep", "--no-progress")
    from raylsl import report

    swept = report.load(out_dir / "sweep")
    assert swept.complete and (swept.trials["status"] == "TERMINATED").all() and len(swept.trials) == 3


@pytest.mark.long
def test_train_after_a_head_stopped_starts_its_own_ray(local_head, tmp_path, task_file):
    """A stopped head stays recorded on the machine; without RAY_ADDRESS raylsl must not dial it."""
    _, env, stop = local_head
    stop()
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-m", "raylsl", "train", "configs/tiny-smoke.yaml", f"task={task_file}",
                          f"output_dir={tmp_path}", "name=after", "workers=1", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "after" / "results.json").read_text())["workers"] == 1
