"""raylsl.lease: one writer per run or sweep; a second is refused naming the first."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from raylsl import lease as lease_module
from raylsl.cli import main
from raylsl.errors import StateError
from raylsl.lease import LEASE, Lease
from raylsl.storage import Storage


def _foreign(storage: Storage, age_s: float) -> None:
    """A lease of a process on another machine whose last heartbeat was ``age_s`` ago."""
    storage.write_json(LEASE, {"owner": "ana@gpu-7 (pid 4242)", "host": "gpu-7", "pid": 4242, "token": "t",
                               "command": "raylsl train --resume runs/r", "heartbeat": time.time() - age_s})


def test_a_held_lease_refuses_a_second_holder_until_released(tmp_path):
    storage = Storage(tmp_path)
    with Lease.take(storage):
        with pytest.raises(StateError, match=rf"in use by .*@{socket.gethostname()} \(pid {os.getpid()}\)"):
            Lease.take(storage)
    assert not (tmp_path / LEASE).exists()
    Lease.take(storage).release()


def test_a_stale_lease_is_broken_only_on_request_and_a_live_one_never(tmp_path):
    storage = Storage(tmp_path)
    _foreign(storage, age_s=3600)
    with pytest.raises(StateError, match=r"leased by ana@gpu-7 \(pid 4242\) .* 60 min ago: .* --break-lease"):
        Lease.take(storage)
    Lease.take(storage, break_stale=True).release()
    _foreign(storage, age_s=10)
    with pytest.raises(StateError, match="in use by ana@gpu-7"):
        Lease.take(storage, break_stale=True)


def test_the_lease_of_a_dead_process_on_this_machine_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage = Storage(tmp_path)
    storage.write_json(LEASE, {"owner": "killed", "host": socket.gethostname(), "pid": int(dead.stdout),
                               "token": "t", "heartbeat": time.time()})
    Lease.take(storage).release()


def test_the_holder_renews_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    with Lease.take(Storage(tmp_path)) as held:
        first = json.loads((tmp_path / LEASE).read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LEASE).read_text())["heartbeat"] > first
        assert held.record["token"] == json.loads((tmp_path / LEASE).read_text())["token"]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_second_resume_of_a_leased_run_or_sweep_is_refused(command, tmp_path, tiny_config, capsys):
    from tests.test_cli import _run_dir

    run = _run_dir(tmp_path, tiny_config)
    if command == "sweep":
        pytest.importorskip("optuna")
        (run / "sweep.json").write_text(json.dumps({"workers_per_trial": 0, "trials": 2}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with Lease.take(Storage(run)):
        assert main([command, "--resume", str(run)]) == 2
        before[LEASE] = (run / LEASE).read_bytes()
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
    err = capsys.readouterr().err
    assert err.startswith(f"raylsl: error: {run} is in use by ") and f"(pid {os.getpid()})" in err
    assert len(err.strip().splitlines()) == 1


def test_break_lease_resumes_a_run_whose_holder_died_elsewhere(tmp_path, tiny_config, capsys):
    from tests.test_cli import _run_dir

    run = _run_dir(tmp_path, tiny_config, train__steps=2, eval_before=False)
    _foreign(Storage(run), age_s=3600)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "rerun with --break-lease" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress", "--break-lease"]) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "complete" and not (run / LEASE).exists()
