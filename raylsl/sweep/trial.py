"""One sweep trial: a Ray Tune function trainable that runs one training run.

A trial reads nothing from the driver's disk. It receives `SweepInputs` through the object store
(``tune.with_parameters``): the base run config, the task's examples and the static selectors'
scores, computed once before the trials. It trains in its own process (checkpoints through
``tune.report``, so a rescheduled trial continues from its checkpoint in the sweep's storage) or
drives its own Ray Train workers (whose run is kept under ``STORAGE/trials/<trial_id>/ray``), and
ends with one report: its metrics and a checkpoint holding ``adapter/``, ``results.json`` and its
records. A trial whose newest checkpoint already holds results (a resumed sweep) reports them
again without training; so does one whose final checkpoint reached storage but was not recorded
(a driver killed in between). A trial the fit check refuses (it cannot fit where it would train)
reports ``infeasible`` with the reason, and ends without loading anything.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylsl.config import RunConfig, with_overrides
from raylsl.errors import RaylslError
from raylsl.fit import DoesNotFit
from raylsl.results import format_layers, run_results
from raylsl.selectors import LayerScores
from raylsl.storage import RunDir, Storage
from raylsl.sweep.space import trial_overrides

RESULTS = "results.json"
INFEASIBLE = "infeasible"
"""The key of the one report a trial makes when the fit check refuses it (`raylsl.fit`)."""


@dataclass(frozen=True)
class SweepInputs:
    """What every trial gets from the driver (through Ray's object store)."""

    base: RunConfig
    """The run config trials start from (validation split, no evaluation before training)."""
    storage: str
    """URI of the sweep's storage directory."""
    examples: list
    """The task's examples (each trial splits them with its own data settings)."""
    scores: dict[str, LayerScores]
    """Static selectors' scores by `raylsl.plan.score_key`."""
    rungs: tuple[float, ...] = ()
    """Fractions of its steps after which a trial evaluates and reports (the scheduler's rungs)."""
    metric: str = "acc"
    """The validation metric the sweep ranks trials by (reported as ``val_<metric>``)."""


def eval_steps(rungs, steps: int) -> list[int]:
    """The steps at which a ``steps``-step trial reaches each rung (the first step at or past it)."""
    return sorted({max(1, math.ceil(fraction * steps - 1e-9)) for fraction in rungs})


def trial_config(inputs: SweepInputs, params: dict[str, Any], trial_id: str) -> RunConfig:
    return with_overrides(inputs.base, {**trial_overrides(params), "name": trial_id}, source=f"trial {trial_id}")


def run_trial(params: dict[str, Any], inputs: SweepInputs) -> None:
    """The Tune trainable: one training run, intermediate checkpoints, one final report."""
    from ray import tune

    warnings.filterwarnings("ignore")  # library deprecations, once per trial, bury Tune's table
    context = tune.get_context()
    trial_id = context.get_trial_id()
    finished = _finished_results(tune.get_checkpoint())
    if finished is not None:
        tune.report(trial_metrics(finished, inputs.metric), checkpoint=tune.get_checkpoint())
        return
    with tempfile.TemporaryDirectory() as out:
        # A driver killed after this trial's final checkpoint reached storage but before Tune
        # recorded it restores the trial from an older checkpoint: report the final one instead.
        finished = _unrecorded_results(Storage(inputs.storage).child("tune", Path(context.get_trial_dir()).name),
                                       Path(out))
        if finished is not None:
            tune.report(trial_metrics(finished, inputs.metric), checkpoint=tune.Checkpoint.from_directory(out))
            return
    config = trial_config(inputs, params, trial_id)
    with tempfile.TemporaryDirectory() as out:
        try:
            results = _train(config, inputs, Path(out))
        except DoesNotFit as exc:  # refused before anything loaded: recorded, never run into an OOM
            tune.report({INFEASIBLE: True, "final": True, "error": str(exc)})
            return
        Storage(out).write_json(RESULTS, results)
        tune.report(trial_metrics(results, inputs.metric), checkpoint=tune.Checkpoint.from_directory(out))


def _train(config: RunConfig, inputs: SweepInputs, out: Path) -> dict[str, Any]:
    """Trains the trial's run with its records in ``out``; returns its results."""
    from raylsl.plan import build_plan

    started = time.perf_counter()
    steps = eval_steps(inputs.rungs, config.train.steps)
    run = RunDir(out, Storage(inputs.storage).child("trials", config.name))
    plan, loaded = build_plan(config, config.name, run.storage.uri, keep_model=config.workers == 0,
                              examples=inputs.examples, scores=inputs.scores)
    if config.workers:
        from raylsl.distributed.ray_train import train_in_workers

        outcome = train_in_workers(plan, run, progress=False, eval_steps=steps)
    else:
        from ray import tune

        from raylsl.assemble import assemble
        from raylsl.distributed.ray_train import ReportCheckpoints
        from raylsl.plan import local_device
        from raylsl.training.engine import TorchEngine
        from raylsl.training.session import run_session

        a = assemble(plan, local_device(), loaded)
        checkpoints = ReportCheckpoints(0, out, api=tune)
        outcome = run_session(a, out, TorchEngine(a.model, config.train), checkpoints, progress=False,
                              eval_steps=steps)
    return run_results(plan, outcome, time.perf_counter() - started, run.storage.uri)


def _finished_results(checkpoint) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / RESULTS
        return json.loads(path.read_text()) if path.is_file() else None


def _unrecorded_results(trial_dir: Storage, out: Path) -> dict[str, Any] | None:
    """The results of a final checkpoint in ``trial_dir`` (downloaded into ``out``), if there is one."""
    final = [name for name in trial_dir.listdir()
             if name.startswith("checkpoint_") and trial_dir.is_file(f"{name}/{RESULTS}")]
    if not final:
        return None
    trial_dir.download(max(final), out)
    return json.loads((out / RESULTS).read_text())


def trial_metrics(results: dict[str, Any], metric: str = "acc") -> dict[str, Any]:
    """What a trial reports to Tune: every validation metric the task has (``val_*``), trainable
    parameters, the run's finite costs (`raylsl.training.costs`: ``peak_memory``, ``step_time``,
    ``step_time_spread``, ``tokens_per_second``, ``estimated_memory``), and what the report shows."""
    loss, value = results["train"]["final_loss"], results["after"].get(metric, math.nan)
    if not (math.isfinite(loss) and math.isfinite(value)):
        raise RaylslError(f"the run diverged or has no {metric}: final training loss {loss}, validation {metric} {value}")
    params, adapted = results["params"], results["adapted_blocks"]
    all_blocks = params["adapter"] / max(len(adapted), 1) * results["num_blocks"] + params["head"]
    dynamic = results.get("dynamic")
    if dynamic:
        per_step = dynamic["adapter_params_updated_per_step"] / max(dynamic["adapter_params_existing"], 1)
        blocks = f"{results['selector']}: {per_step * results['num_blocks']:.0f} of {results['num_blocks']} per step"
    else:
        blocks = f"{format_layers(adapted)} ({len(adapted)})"
    costs = {k: v for k, v in (results.get("costs") or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return {
        **{f"val_{k}": float(v) for k, v in results["after"].items() if k != "n" and isinstance(v, (int, float))},
        **costs, "trainable_params": int(params["trainable"]),
        "pct_of_all_blocks": 100.0 * params["trainable"] / all_blocks, "blocks": blocks, "rank": results["lora_r"],
        "train_time_s": results["train"]["train_time_s"], "selection_time_s": results["selection_time_s"],
        "final_loss": loss, "step": results["train"]["steps"], "fraction": 1.0, "final": True,
        "num_blocks": results["num_blocks"],
    }


def copy_records(source: Path, target: Path, names=("adapter", RESULTS)) -> None:
    for name in names:
        if (source / name).exists():
            shutil.rmtree(target / name, ignore_errors=True)
            (shutil.copytree if (source / name).is_dir() else shutil.copyfile)(source / name, target / name)
