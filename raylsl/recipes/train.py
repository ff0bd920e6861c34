"""``raylsl train``: plan the run (model, data, blocks), train it here or in Ray Train workers,
record the results.

Everything the user can get wrong is checked before the run directory exists (the config, the
model, the task, the selection, the storage), so bad input never leaves a half-written run. A run
directory holds:
    config.yaml      the resolved config          run.json      status, blocks
    metrics.jsonl    one line per step            checkpoints/  resumable state (single process)
    adapter/         the final peft adapter       results.json  written last, only on success
    scores.json/png  when a selector chose        ray/          Ray Train's checkpoints (workers)
With ``storage=`` the same files are kept in ``STORAGE/<name>/`` too, which is where workers on other
nodes write and where ``--resume`` and ``raylsl eval`` can read them from any machine.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from raylsl.assemble import assemble
from raylsl.cluster import check_ray_address, init_ray
from raylsl.config import RunConfig
from raylsl.errors import ConfigError
from raylsl.lease import Lease
from raylsl.plan import Plan, build_plan, load_run_config, local_device
from raylsl.results import run_results
from raylsl.selectors import Selection
from raylsl.selectors.plots import plot_scores, plot_trajectory
from raylsl.storage import RunDir, Storage, is_remote
from raylsl.tracking import RECORD_DIRS
from raylsl.training.checkpoint import METRICS, LocalCheckpoints
from raylsl.training.engine import TorchEngine
from raylsl.training.session import run_session

RECORDS = ("adapter", METRICS, "ist.json", "ist_importance.png", "lisa.json", *RECORD_DIRS)


def train(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Runs a fresh training run; returns the results also written to ``results.json``."""
    if config.workers:
        check_ray_address()
    name = run_name(config)
    run = _new_run_dir(config, name)
    if config.workers:  # joined before planning: on a cluster, the blocks are scored where the workers train
        init_ray(progress)
    plan, loaded = build_plan(config, name, run.storage.uri, keep_model=config.workers == 0)
    with Lease.take(run.storage):
        _create(run, config)
        return execute(plan, run, loaded, progress)


def resume(target: str | Path, progress: bool = True, break_lease: bool = False) -> dict[str, Any]:
    """Continues the run in ``target`` (a local run directory or its storage URI) from the newest
    checkpoint the run directory and the storage hold together (`LocalCheckpoints`).

    Args:
        break_lease: take over the run's lease when its holder stopped renewing it (`raylsl.lease`).

    Raises:
        StateError: another process works on the run (its lease is held).
    """
    run, config = open_run(target)
    if config.workers:
        check_ray_address()
    with Lease.take(run.storage, break_stale=break_lease):
        if run.shared:  # the local copies of what the run's storage holds (another machine's)
            for name in ("config.yaml", "run.json"):
                if run.storage.is_file(name):
                    run.storage.download(name, run.local / name)
        layers = run.storage.read_json("run.json")["layers"] if run.storage.is_file("run.json") else None
        plan, loaded = build_plan(config, run.local.name, run.storage.uri, layers=layers,
                                  keep_model=config.workers == 0)
        return execute(plan, run, loaded, progress)


def execute(plan: Plan, run: RunDir, loaded, progress: bool) -> dict[str, Any]:
    """Trains the plan here (``workers=0``) or in Ray Train workers and records the results."""
    started = time.perf_counter()
    run.write_json("run.json", {"status": "running", "layers": list(plan.layers)})
    if plan.selection is not None:
        write_selection(plan.selection, run)
    try:
        if plan.config.workers:
            from raylsl.distributed.ray_train import train_in_workers

            outcome = train_in_workers(plan, run, progress)
        else:
            outcome = _train_here(plan, run, loaded, progress)
        run.sync(*RECORDS)
    except BaseException as exc:
        run.write_json("run.json", {"status": "failed", "error": repr(exc), "layers": list(plan.layers)})
        raise
    results = run_results(plan, outcome, time.perf_counter() - started, str(run.local))
    run.write_json("results.json", results)
    run.write_json("run.json", {"status": "complete", "layers": list(plan.layers)})
    return results


def _train_here(plan: Plan, run: RunDir, loaded, progress: bool) -> dict[str, Any]:
    a = assemble(plan, local_device(), loaded)
    engine = TorchEngine(a.model, plan.config.train)
    return run_session(a, run.local, engine, LocalCheckpoints(run.local, mirror=run), progress=progress)


def run_name(config: RunConfig, prefix: str = "") -> str:
    return config.name or "{}{}-{}-{}".format(prefix, Path(config.model.name).name, Path(config.task.name).stem,
                                              datetime.now().strftime("%Y%m%d-%H%M%S-%f"))


def _new_run_dir(config: RunConfig, name: str) -> RunDir:
    """Where a new run goes; refuses a name already used locally or in storage, and storage that
    cannot be written. Creates nothing."""
    local = Path(config.output_dir) / name
    storage = Storage(config.storage).child(name) if config.storage else None
    if local.exists() and any(local.iterdir()):
        raise ConfigError(f"run directory {local} already exists; choose another name=, or continue it with "
                          f"`raylsl train --resume {local}`")
    if storage is not None:
        Storage(config.storage).check_writable()
        if storage.exists("config.yaml"):
            raise ConfigError(f"{storage.uri} already holds a run; choose another name=, or continue it with "
                              f"`raylsl train --resume {storage.uri}`")
    return RunDir(local, storage)


def _create(run: RunDir, config: RunConfig) -> None:
    run.local.mkdir(parents=True, exist_ok=True)
    run.write_text("config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def create_run_dir(config: RunConfig, prefix: str = "") -> RunDir:
    """A fresh run directory holding the resolved ``config.yaml`` (``raylsl select``'s)."""
    run = _new_run_dir(config, run_name(config, prefix))
    _create(run, config)
    return run


def open_run(target: str | Path) -> tuple[RunDir, RunConfig]:
    """An existing run and its checked config, from its local directory or its storage URI (then
    its local directory is ``OUTPUT_DIR/NAME`` of its config, which `resume` fills). Writes nothing.

    Raises:
        ConfigError: ``target`` is not a run, or its ``config.yaml`` is damaged (named).
    """
    if is_remote(target):
        storage = Storage(target)
        if not storage.is_file("config.yaml"):
            raise ConfigError(f"{storage.uri} is not a raylsl run (no config.yaml); pass the URI `raylsl train` printed")
        config = _stored_config(storage)
        return RunDir(Path(config.output_dir) / Path(storage.uri).name, storage), config
    local = Path(target)
    if not (local / "config.yaml").is_file():
        raise ConfigError(f"{local} is not a raylsl run directory (no config.yaml); pass the folder that "
                          f"`raylsl train` printed")
    config = load_run_config(local / "config.yaml")
    return RunDir(local, Storage(config.storage).child(local.name) if config.storage else None), config


def _stored_config(storage: Storage) -> RunConfig:
    """The checked ``config.yaml`` of the run in ``storage``; an error names its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = storage.download("config.yaml", Path(tmp) / "config.yaml")
        try:
            return load_run_config(path)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(path), storage.uri_of("config.yaml"))) from None


def write_selection(selection: Selection, run: RunDir) -> None:
    """Records which blocks were chosen and why: ``scores.json``, the ``scores.png`` bar plot and,
    for selectors that learn their scores (Flexora), ``<method>_trajectory.png``."""
    run.write_json("scores.json", selection.to_dict())
    plot_scores(selection, run.local / "scores.png")
    trajectory = selection.scores.details.get("trajectory")
    method = selection.scores.method
    if trajectory:
        plot_trajectory(trajectory, run.local / f"{method}_trajectory.png", f"{method} scores", "score")
    run.sync("scores.png", f"{method}_trajectory.png")
