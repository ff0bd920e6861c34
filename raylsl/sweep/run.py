"""``raylsl sweep``: a Ray Tune experiment whose searcher is Optuna, two objectives (maximise
validation accuracy, minimise trainable parameters), then the Pareto report.

The sweep directory holds everything needed to inspect or resume it::

    RUN_DIR/sweep.json         settings (space file, trials, concurrency, storage URL, selection cost)
    RUN_DIR/space.yaml         a copy of the search space file
    RUN_DIR/base_config.yaml   the run config every trial starts from
    RUN_DIR/optuna.db          the Optuna study (SQLite unless the space names an RDB URL)
    RUN_DIR/scores/            static selectors' scores, computed once before the trials
    RUN_DIR/tune/              Ray Tune's experiment (trial states, results, searcher state)
    RUN_DIR/trials/<trial_id>/ each trial's ordinary run directory (config, adapter, results.json)
    RUN_DIR/pareto.{csv,md,png}

A trial trains on the train split and reports accuracy on the validation split only; the test
split is evaluated after the search, for front members only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import optuna
import yaml
from ray.tune.search.optuna import OptunaSearch

from raylsl.config import SMOKE_OVERRIDES, load_config
from raylsl.errors import ConfigError, RaylslError
from raylsl.recipes.train import format_layers, write_json
from raylsl.report import OBJECTIVES, SweepReport, load
from raylsl.selectors.select import SCORE_CACHE_ENV
from raylsl.sweep.space import SearchSpace, check_against_config, load_space, trial_overrides

SMOKE_TRIALS = 3


def sweep(space_path: str | Path, overrides: dict[str, Any] | None = None, trials: int | None = None,
          concurrency: int | None = None, workers_per_trial: int | None = None, smoke: bool = False,
          output_dir: str | Path = "runs", name: str | None = None, progress: bool = True) -> SweepReport:
    """Runs the sweep a search space file describes; returns its report (files already written).

    Args:
        overrides: run-config overrides on top of the space's ``base`` and ``set``.
        trials, concurrency, workers_per_trial: override the space file's values.
        smoke: a few tiny steps per trial and at most 3 trials: checks the whole path quickly.

    Raises:
        ConfigError: a bad space file or override, named by file and key; nothing is written.
    """
    space = load_space(space_path)
    fixed = {**space.fixed, **(overrides or {}), **(SMOKE_OVERRIDES if smoke else {})}
    check_against_config(space, fixed)
    base = load_config(str(space.base) if space.base else None, fixed)
    settings = _settings(space, space_path, overrides, trials, concurrency, workers_per_trial, smoke)
    run_dir = Path(output_dir) / (name or f"sweep-{Path(space_path).stem}-{datetime.now():%Y%m%d-%H%M%S}")
    _create_sweep_dir(run_dir, space, space_path, base, settings)
    settings["selection"] = _score_once(run_dir, space)
    write_json(run_dir / "sweep.json", settings)

    _start_ray(settings["workers_per_trial"], progress)
    from ray import tune

    tuner = tune.Tuner(
        _trainable(run_dir, settings),
        tune_config=tune.TuneConfig(search_alg=_searcher(space, settings), num_samples=settings["trials"],
                                    max_concurrent_trials=settings["concurrency"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(run_dir.resolve()), verbose=1 if progress else 0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    return _finish(run_dir, tuner, settings)


def _settings(space: SearchSpace, space_path, overrides, trials, concurrency, workers_per_trial,
              smoke: bool) -> dict[str, Any]:
    """The sweep's settings: the space file's, with the command line's on top (checked)."""
    settings = {
        "space": str(Path(space_path).resolve()), "overrides": overrides or {}, "smoke": smoke,
        "trials": space.trials if trials is None else trials,
        "concurrency": space.concurrency if concurrency is None else concurrency,
        "workers_per_trial": space.workers_per_trial if workers_per_trial is None else workers_per_trial,
    }
    for key in ("trials", "concurrency"):
        if settings[key] < 1:
            raise ConfigError(f"--{key}={settings[key]} must be >= 1")
    if settings["workers_per_trial"] < 0:
        raise ConfigError(f"--workers-per-trial={settings['workers_per_trial']} must be >= 0")
    if smoke:
        settings["trials"] = min(settings["trials"], SMOKE_TRIALS)
    return settings


def _create_sweep_dir(run_dir: Path, space: SearchSpace, space_path, base, settings: dict[str, Any]) -> None:
    """A fresh sweep directory with the space, the trials' base config and ``sweep.json``."""
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"sweep directory {run_dir} already exists; choose another --name, or continue it "
                          f"with `raylsl sweep --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space_path, run_dir / "space.yaml")
    config = {**base.to_dict(), "output_dir": str((run_dir / "trials").resolve()), "eval_before": False,
              "eval_split": "validation", "workers": settings["workers_per_trial"], "name": None}
    (run_dir / "base_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    settings["storage"] = space.storage or f"sqlite:///{(run_dir / 'optuna.db').resolve()}"
    settings["study_name"] = run_dir.name
    settings["baseline"] = space.baseline(base.lora.r)
    write_json(run_dir / "sweep.json", settings)


def resume_sweep(run_dir: str | Path, progress: bool = True) -> SweepReport:
    """Continues an interrupted sweep: finished trials are kept, unfinished ones run again (a
    trial that had started training continues from its newest checkpoint)."""
    from ray import tune

    run_dir = Path(run_dir)
    settings_path = run_dir / "sweep.json"
    if not settings_path.is_file():
        raise ConfigError(f"{run_dir} is not a raylsl sweep directory (no sweep.json); pass the folder that "
                          f"`raylsl sweep` printed")
    settings = json.loads(settings_path.read_text())
    if not tune.Tuner.can_restore(str((run_dir / "tune").resolve())):
        raise ConfigError(f"{run_dir}: the sweep stopped before Ray Tune saved any state; start it again")
    _start_ray(settings["workers_per_trial"], progress)
    tuner = tune.Tuner.restore(str((run_dir / "tune").resolve()), _trainable(run_dir, settings),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    return _finish(run_dir, tuner, settings)


def _finish(run_dir: Path, tuner, settings: dict[str, Any]) -> SweepReport:
    started = time.perf_counter()
    tuner.fit()
    _fail_orphaned_trials(settings)
    settings.setdefault("wall_time_s", 0.0)
    settings["wall_time_s"] += time.perf_counter() - started
    write_json(run_dir / "sweep.json", settings)
    report = load(run_dir)
    if report.complete:  # an interrupted sweep's front is provisional: no test split yet
        report = evaluate_front(report)
    report.write()
    return report


def evaluate_front(report: SweepReport) -> SweepReport:
    """Test accuracy of each front member that lacks it (``trials/<id>/test_metrics.json``)."""
    from raylsl.recipes.evaluate import evaluate_target

    for row in report.pareto_front().itertuples():
        trial_dir = report.run_dir / "trials" / row.trial_id
        if not (trial_dir / "test_metrics.json").is_file():
            write_json(trial_dir / "test_metrics.json", evaluate_target(str(trial_dir), [], "test"))
    return load(report.run_dir)


# --- trials -------------------------------------------------------------------------------------

def run_trial(run_dir: Path, trial_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Trains one trial in ``run_dir/trials/<trial_id>`` and returns the metrics it reports.

    A trial directory that already holds results (a resumed sweep) is read, one with a config
    but no results continues from its checkpoint.

    Raises:
        RaylslError: the run diverged (non-finite loss or accuracy): the trial fails, visibly.
    """
    from raylsl.recipes import train as recipe

    trial_dir = run_dir / "trials" / trial_id
    if (trial_dir / "results.json").is_file():
        results = json.loads((trial_dir / "results.json").read_text())
    else:
        with sweep_score_cache(run_dir):
            if (trial_dir / "config.yaml").is_file():
                results = recipe.resume(trial_dir, progress=False)
            else:
                config = load_config(run_dir / "base_config.yaml", {**trial_overrides(params), "name": trial_id})
                results = recipe.train(config, progress=False)
    return trial_metrics(results)


@contextmanager
def sweep_score_cache(run_dir: Path) -> Iterator[None]:
    """Points the score cache at ``RUN_DIR/scores`` inside the ``with`` body, then restores the
    environment (a sweep run from Python must not redirect the caller's later selections)."""
    previous = os.environ.get(SCORE_CACHE_ENV)
    os.environ[SCORE_CACHE_ENV] = str((run_dir / "scores").resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SCORE_CACHE_ENV, None)
        else:
            os.environ[SCORE_CACHE_ENV] = previous


def trial_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """What a trial reports to Tune: the two objectives (always finite) and what the report shows."""
    loss, acc = results["train"]["final_loss"], results["after"]["acc"]
    if not (math.isfinite(loss) and math.isfinite(acc)):
        raise RaylslError(f"the run diverged: final training loss {loss}, validation accuracy {acc}")
    params, adapted = results["params"], results["adapted_blocks"]
    all_blocks = params["adapter"] / max(len(adapted), 1) * results["num_blocks"] + params["head"]
    dynamic = results.get("dynamic")
    if dynamic:
        per_step = dynamic["adapter_params_updated_per_step"] / max(dynamic["adapter_params_existing"], 1)
        blocks = f"{results['selector']}: {per_step * results['num_blocks']:.0f} of {results['num_blocks']} per step"
    else:
        blocks = f"{format_layers(adapted)} ({len(adapted)})"
    return {
        "val_acc": float(acc), "trainable_params": int(params["trainable"]),
        "pct_of_all_blocks": 100.0 * params["trainable"] / all_blocks, "blocks": blocks, "rank": results["lora_r"],
        "train_time_s": results["train"]["train_time_s"], "selection_time_s": results["selection_time_s"],
        "final_loss": loss,
    }


def _trial(params: dict[str, Any], run_dir: str) -> None:
    """The Tune trainable: one training run, one report."""
    import warnings

    from ray import tune

    warnings.filterwarnings("ignore")  # library deprecations, once per trial, bury Tune's table

    tune.report(run_trial(Path(run_dir), tune.get_context().get_trial_id(), params))


def _trainable(run_dir: Path, settings: dict[str, Any]):
    import ray
    from ray import tune

    resources = ray.cluster_resources()
    if settings["workers_per_trial"]:
        # The trial only drives its Ray Train workers (1 CPU or GPU each, requested by the trainer).
        request = {"cpu": 0.5}
    else:
        request = {"cpu": max(1, int(resources.get("CPU", 1) // settings["concurrency"]))}
        if resources.get("GPU", 0) >= 1:
            request["gpu"] = 1
    return tune.with_resources(tune.with_parameters(_trial, run_dir=str(run_dir.resolve())), request)


def _start_ray(workers_per_trial: int, progress: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=progress)
        return
    # A trial that drives Ray Train workers holds 0.5 CPU itself: give the local Ray the logical room
    # (the workers do the computing), or Tune waits forever for a worker group that cannot start.
    cpus = os.cpu_count() or 1
    ray.init(address="local", num_cpus=max(cpus, workers_per_trial + 1) if workers_per_trial else cpus,
             include_dashboard=False, log_to_driver=progress)


# --- the searcher -------------------------------------------------------------------------------

def _searcher(space: SearchSpace, settings: dict[str, Any]) -> "ParetoOptunaSearch":
    sampler = (optuna.samplers.RandomSampler(seed=space.seed) if space.sampler == "random"
               else optuna.samplers.TPESampler(seed=space.seed))
    points = [settings["baseline"], *space.points]
    return ParetoOptunaSearch(space=space, metric=list(OBJECTIVES), mode=list(OBJECTIVES.values()),
                              points_to_evaluate=points, sampler=sampler, study_name=settings["study_name"],
                              storage=optuna.storages.RDBStorage(settings["storage"]))


class ParetoOptunaSearch(OptunaSearch):
    """OptunaSearch that records a failed or metric-less trial as FAIL in the study.

    Ray's multi-objective path passes ``[None, None]`` to ``study.tell`` for a trial that errored,
    which Optuna rejects; Ray only logs that, and the study would keep the trial RUNNING forever.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        values = [(result or {}).get(metric) for metric in self.metric]
        ok = not error and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if ok or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)


def _fail_orphaned_trials(settings: dict[str, Any]) -> None:
    """Any study trial still RUNNING once Tune is done (a killed driver, a lost report) becomes FAIL."""
    study = optuna.load_study(study_name=settings["study_name"], storage=settings["storage"])
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _score_once(run_dir: Path, space: SearchSpace) -> dict[str, float]:
    """Scores every static selector the space can pick, once, into ``RUN_DIR/scores``; trials then
    read them from there (the score cache is keyed by everything but N). Returns seconds per selector."""
    from raylsl.recipes.train import prepare
    from raylsl.selectors import build_selector

    choices = next((p.choices for p in space.parameters if p.name == "selector" and p.choices), ())
    seconds: dict[str, float] = {}
    with sweep_score_cache(run_dir):
        for selector in choices:
            if selector == "all" or not getattr(build_selector(selector, None), "needs_data", False):
                continue
            started = time.perf_counter()
            prepare(load_config(run_dir / "base_config.yaml", trial_overrides({"selector": selector, "n": 1})))
            seconds[selector] = time.perf_counter() - started
    return seconds
