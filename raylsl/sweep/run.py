"""``raylsl sweep``: a Ray Tune experiment whose searcher is Optuna, multi-objective (by default
maximise validation accuracy, minimise trainable parameters; the space file's ``objectives:`` trades
the metric against 1 or 2 measured costs instead), then the Pareto report.

A sweep lives in its storage directory (``STORAGE/NAME`` with ``storage=``, else the local sweep
directory ``OUTPUT_DIR/NAME``), which holds everything needed to inspect or resume it from any
machine that can read it::

    sweep.json          settings (space file, trials, concurrency, selection cost, wall time)
    space.yaml          a copy of the search space file
    base_config.yaml    the run config every trial starts from
    examples.json       the task's examples, read once by the driver (trials and resumes reuse them)
    scores/<key>.json   static selectors' scores, computed once before the trials
    tune/               Ray Tune's experiment: trial states, results, checkpoints (each trial's
                        final checkpoint holds its adapter/ and results.json), the searcher's state
    trials/<id>/ray/    Ray Train's checkpoints of a trial that trains in workers
    optuna.db           the Optuna study, exported after every trial
    test/<id>.json      test-split metrics of front members, computed after the search
    pareto.{csv,md,png} the report (also written to the local sweep directory)

A trial trains on the train split and reports accuracy on the validation split only; the test
split is evaluated after the search, for front members only.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from raylsl.cluster import check_ray_address
from raylsl.config import SMOKE_OVERRIDES, with_overrides
from raylsl.data import GenExample, example_from_record, example_record, read_examples
from raylsl.errors import ConfigError
from raylsl.lease import Lease
from raylsl.plan import build_plan, load_run_config, score_key
from raylsl.report import SweepReport, load, objectives, open_sweep
from raylsl.selectors import LayerScores, build_selector
from raylsl.storage import RunDir, Storage
from raylsl.tracking import MLFLOW_DIR, sweep_callbacks
from raylsl.sweep.progress import TrialProgress
from raylsl.sweep.scheduler import sweep_rungs, sweep_scheduler
from raylsl.sweep.search import public_url, searcher
from raylsl.sweep.space import SearchSpace, check_against_config, load_space, scheduler_name, trial_overrides
from raylsl.sweep.trial import SweepInputs, run_trial

SMOKE_TRIALS = 3


def sweep(space_path: str | Path, overrides: dict[str, Any] | None = None, trials: int | None = None,
          concurrency: int | None = None, workers_per_trial: int | None = None, smoke: bool = False,
          output_dir: str | Path = "runs", name: str | None = None, progress: bool = True,
          scheduler: str | None = None) -> SweepReport:
    """Runs the sweep a search space file describes; returns its report (files already written).

    Args:
        overrides: run-config overrides on top of the space's ``base`` and ``set`` (``storage=``
            puts the sweep in shared storage).
        trials, concurrency, workers_per_trial, scheduler: override the space file's values.
        smoke: a few tiny steps per trial and at most 3 trials: checks the whole path quickly.

    Raises:
        ConfigError: a bad space file or override, named by file and key; nothing is written.
    """
    space = load_space(space_path)
    fixed = {**space.fixed, **(overrides or {}), **(SMOKE_OVERRIDES if smoke else {})}
    check_against_config(space, fixed)
    base = load_run_config(str(space.base) if space.base else None, fixed)
    settings = _settings(space, space_path, overrides, trials, concurrency, workers_per_trial, smoke, scheduler)
    check_ray_address()
    name = name or f"sweep-{Path(space_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run = _new_sweep_dir(Path(output_dir) / name, base.storage, name)
    examples = read_examples(base.task, base.data)
    settings["metric"] = _metric(space, base, examples)
    if space.objectives is not None:  # checked again now that the task's metric is known
        settings["objectives"] = objectives(settings["metric"], space.objectives, f"{space.path}: objectives")
    # Trials report through Tune, whose own loggers record them (TensorBoard always, MLflow with
    # tracking=mlflow: `raylsl.tracking.sweep_callbacks`); a trial's run tracking would write into a
    # directory nobody keeps.
    trial_base = with_overrides(base, {"eval_before": False, "eval_split": "validation", "storage": None,
                                       "workers": settings["workers_per_trial"], "name": None, "tracking": "none"})
    settings.update(study_name=name, storage_uri=run.storage.uri, local_dir=str(run.local.resolve()),
                    baseline=space.baseline(base.lora.r), tracking=base.tracking, tracking_uri=base.tracking_uri)
    with Lease.take(run.storage):
        _create_sweep_dir(run, space, space_path, trial_base, examples, settings)
        _start_ray(settings["workers_per_trial"], progress)  # on a cluster, a Ray task scores where trials train
        scores, settings["selection"] = _score_once(trial_base, space, examples, run, base.storage)
        run.write_json("sweep.json", settings)
        inputs = SweepInputs(trial_base, run.storage.uri, examples, scores, sweep_rungs(settings), settings["metric"])
        return _fit(run, settings, inputs, progress, restore=False, optuna_url=space.optuna_storage)


def _metric(space: SearchSpace, base, examples: list) -> str:
    """The validation metric the sweep ranks trials by: the space file's, or the task's."""
    from raylsl.objective.generative import task_metric

    found = task_metric(examples, base.task.answer_pattern)
    metric = found if space.metric == "auto" else space.metric
    generative = bool(examples) and isinstance(examples[0], GenExample)
    if generative and metric == "acc":
        raise ConfigError(f"{space.path}: metric=acc, but task {base.task.name} is generative ({examples[0].format} "
                          f"rows): use exact_match (rows with reference answers) or loss")
    if not generative and metric == "exact_match":
        raise ConfigError(f"{space.path}: metric={metric}, but task {base.task.name} is multiple choice: use acc or loss")
    if metric == "exact_match" and found != "exact_match":
        raise ConfigError(f"{space.path}: metric=exact_match, but no example of task {base.task.name} has a reference "
                          f"answer (an 'answer' field, or a task.answer_pattern match in its completion): use loss")
    return metric


def resume_sweep(target: str | Path, progress: bool = True, break_lease: bool = False) -> SweepReport:
    """Continues an interrupted sweep (its local directory or storage URI): finished trials are
    kept, unfinished ones run again (a trial that had started training continues from its newest
    checkpoint).

    Args:
        break_lease: take over the sweep's lease when its holder stopped renewing it (`raylsl.lease`).

    Raises:
        StateError: another process works on the sweep (its lease is held).
    """
    run = open_sweep(target)
    settings = run.storage.read_json("sweep.json")
    check_ray_address()
    with Lease.take(run.storage, break_stale=break_lease):
        inputs = _stored_inputs(run, settings)
        _start_ray(settings["workers_per_trial"], progress)
        from ray import tune

        if not tune.Tuner.can_restore(run.storage.uri_of("tune")):
            raise ConfigError(f"{run.storage.uri}: the sweep stopped before Ray Tune saved any state; start it again")
        return _fit(run, settings, inputs, progress, restore=True)


def _stored_inputs(run: RunDir, settings: dict[str, Any]) -> SweepInputs:
    """What the trials of a sweep get, as the sweep's storage keeps it."""
    from raylsl.config import load_config

    with _scratch_file(run.storage, "base_config.yaml") as path:
        base = load_config(path)
    examples = [example_from_record(r) for r in run.storage.read_json("examples.json")]
    scores = {name[:-5]: LayerScores.from_dict(run.storage.read_json(f"scores/{name}"))
              for name in run.storage.listdir("scores") if name.endswith(".json")}
    return SweepInputs(base, run.storage.uri, examples, scores, sweep_rungs(settings), settings.get("metric", "acc"))


def _settings(space: SearchSpace, space_path, overrides, trials, concurrency, workers_per_trial,
              smoke: bool, scheduler: str | None = None) -> dict[str, Any]:
    """The sweep's settings: the space file's, with the command line's on top (checked)."""
    settings = {
        "space": str(Path(space_path).resolve()), "overrides": overrides or {}, "smoke": smoke,
        "trials": space.trials if trials is None else trials,
        "concurrency": space.concurrency if concurrency is None else concurrency,
        "workers_per_trial": space.workers_per_trial if workers_per_trial is None else workers_per_trial,
        "cpus_per_trial": space.cpus_per_trial, "gpus_per_trial": space.gpus_per_trial, "sampler": space.sampler,
        "n_startup_trials": space.n_startup_trials, "population_size": space.population_size, "seed": space.seed,
        "optuna_storage": space.optuna_storage and public_url(space.optuna_storage),
        "scheduler": space.scheduler if scheduler is None else scheduler_name("--scheduler", scheduler),
        "eta": space.eta, "rungs": space.rungs,
    }
    for key in ("trials", "concurrency"):
        if settings[key] < 1:
            raise ConfigError(f"--{key}={settings[key]} must be >= 1")
    if settings["workers_per_trial"] < 0:
        raise ConfigError(f"--workers-per-trial={settings['workers_per_trial']} must be >= 0")
    if smoke:
        settings["trials"] = min(settings["trials"], SMOKE_TRIALS)
    return settings


def _new_sweep_dir(local: Path, storage: str | None, name: str) -> RunDir:
    remote = Storage(storage).child(name) if storage else None
    if local.exists() and any(local.iterdir()):
        raise ConfigError(f"sweep directory {local} already exists; choose another --name, or continue it "
                          f"with `raylsl sweep --resume {local}`")
    if remote is not None:
        Storage(storage).check_writable()
        if remote.exists("sweep.json"):
            raise ConfigError(f"{remote.uri} already holds a sweep; choose another --name, or continue it with "
                              f"`raylsl sweep --resume {remote.uri}`")
    return RunDir(local, remote)


def _create_sweep_dir(run: RunDir, space: SearchSpace, space_path, base, examples: list, settings: dict) -> None:
    run.local.mkdir(parents=True, exist_ok=True)
    run.write_text("space.yaml", _portable_space(Path(space_path)))
    run.write_text("base_config.yaml", yaml.safe_dump(base.to_dict(), sort_keys=False))
    run.storage.write_json("examples.json", [example_record(ex) for ex in examples])
    run.write_json("sweep.json", settings)


def _portable_space(space_path: Path) -> str:
    """The space file as the sweep keeps it: without ``base``, which is relative to where the file
    was (the resolved base run config is ``base_config.yaml``), so that it loads from any machine,
    and without the password of ``optuna_storage``."""
    raw = yaml.safe_load(space_path.read_text()) or {}
    raw.pop("base", None)
    if raw.get("optuna_storage"):
        raw["optuna_storage"] = public_url(raw["optuna_storage"])
    return (f"# {space_path.name} as this sweep runs it; its base run config, resolved, is base_config.yaml\n"
            + yaml.safe_dump(raw, sort_keys=False))


def _score_once(base, space: SearchSpace, examples: list, run: RunDir,
                storage: str | None = None) -> tuple[dict[str, LayerScores], dict]:
    """Scores every static selector the space can pick, once per distinct score key its discrete
    parameters can produce (Flexora's scores depend on the rank, say), and stores them in
    ``scores/``; trials read them from what the driver sends. Returns the scores and the seconds
    spent per key (``selector:key``). On a Ray cluster the scoring runs in a Ray task where the
    trials train (`raylsl.scoring`); the score cache is ``storage``'s, so later sweeps find it."""
    scores: dict[str, LayerScores] = {}
    seconds: dict[str, float] = {}
    for overrides in space.selector_variants():
        selector = overrides["selector"]
        if selector == "all" or not build_selector(selector, None).needs_data:
            continue
        config = with_overrides(base, trial_overrides({**overrides, "n": 1}), source=f"selector {selector}")
        key = score_key(config)
        if key in scores:
            continue
        started = time.perf_counter()
        scoring = with_overrides(config, {"storage": storage}) if storage else config
        plan, _ = build_plan(scoring, "scores", run.storage.uri, examples=examples, fit=False)
        scores[key] = plan.selection.scores
        run.storage.write_json(f"scores/{key}.json", scores[key].to_dict())
        seconds[f"{selector}:{key}"] = time.perf_counter() - started
        for param in space.ranged(selector):
            ends = {score_key(with_overrides(config, {param.name: v})) for v in (param.low, param.high)}
            if len(ends) > 1:
                print(f"raylsl: {selector}'s scores depend on {param.name}, which the space samples from a range: "
                      f"each {selector} trial scores for itself", flush=True)
    return scores, seconds


def _num_blocks(inputs: SweepInputs) -> int | None:
    """The model's block count, known on the driver from any static selector's scores (one per
    block); None when the space has none, and the searcher then learns it from the first report."""
    return next((len(s.scores) for s in inputs.scores.values()), None)


def _fit(run: RunDir, settings: dict[str, Any], inputs: SweepInputs, progress: bool, restore: bool,
         optuna_url: str | None = None) -> SweepReport:
    """Runs (or, with ``restore``, continues) the Tune experiment, then writes the report.
    ``optuna_url``: the space file's ``optuna_storage``, password included (a fresh sweep's)."""
    import os

    from ray import tune

    # A trial's checkpoint reports carry no validation metrics (only its evaluations do).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"

    _start_ray(settings["workers_per_trial"], progress)
    trainable = _trainable(inputs, settings)
    if restore:
        tuner = tune.Tuner.restore(run.storage.uri_of("tune"), trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        points = [settings["baseline"], *load_space_points(run)]
        space = load_space_from(run)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher(space, settings, points, run.storage.uri,
                                                            num_blocks=_num_blocks(inputs), storage_url=optuna_url),
                                        scheduler=sweep_scheduler(settings, run.storage.uri),
                                        num_samples=settings["trials"], max_concurrent_trials=settings["concurrency"]),
            run_config=tune.RunConfig(name="tune", storage_path=run.storage.uri, verbose=1 if progress else 0,
                                      callbacks=sweep_callbacks(settings.get("tracking", "none"),
                                                                settings.get("tracking_uri"), run.local,
                                                                settings["study_name"])
                                      + ([TrialProgress(settings.get("metric", "acc"))] if progress else []),
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
    started = time.perf_counter()
    tuner.fit()
    settings["wall_time_s"] = settings.get("wall_time_s", 0.0) + time.perf_counter() - started
    run.write_json("sweep.json", settings)
    run.sync(MLFLOW_DIR)
    if run.storage.is_file("optuna.db"):
        run.storage.download("optuna.db", run.local / "optuna.db") if run.shared else None
    report = load(run.local)
    if report.complete:  # an interrupted sweep's front is provisional: no test split yet
        report = evaluate_front(report)
    report.write()
    return report


def load_space_from(run: RunDir) -> SearchSpace:
    with _scratch_file(run.storage, "space.yaml") as path:
        return load_space(path)


def load_space_points(run: RunDir) -> list[dict[str, Any]]:
    return list(load_space_from(run).points)


class _scratch_file:
    """A storage file as a local path for the body of a ``with`` (the file itself when local)."""

    def __init__(self, storage: Storage, rel: str):
        self.storage, self.rel = storage, rel

    def __enter__(self) -> Path:
        import tempfile

        if self.storage.local is not None:
            return self.storage.local / self.rel
        self._tmp = tempfile.TemporaryDirectory()
        return self.storage.download(self.rel, Path(self._tmp.name) / Path(self.rel).name)

    def __exit__(self, *exc) -> None:
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()


def evaluate_front(report: SweepReport) -> SweepReport:
    """Test metrics of each front member that lacks them, from its adapter in storage
    (``test/<trial_id>.json``)."""
    from raylsl.config import load_config
    from raylsl.evaluation import evaluate_adapter

    storage = report.storage
    missing = [row for row in report.pareto_front().itertuples() if not storage.is_file(f"test/{row.trial_id}.json")]
    if not missing:
        return report
    with _scratch_file(storage, "base_config.yaml") as path:
        base = load_config(path)
    examples = [example_from_record(r) for r in storage.read_json("examples.json")]
    for row in missing:
        checkpoint = Storage(row.checkpoint)
        config = with_overrides(base, {**trial_overrides(json.loads(row.params)), "name": row.trial_id})
        layers = checkpoint.read_json("results.json")["layers"]
        metrics = evaluate_adapter(config, checkpoint.child("adapter"), layers, "test", examples)
        storage.write_json(f"test/{row.trial_id}.json", metrics)
    return load(report.run_dir)


# --- Ray and trial resources ----------------------------------------------------------------------

def _trainable(inputs: SweepInputs, settings: dict[str, Any]):
    import ray
    from ray import tune

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    request = trial_resources(settings, ray.cluster_resources(), nodes)
    return tune.with_resources(tune.with_parameters(run_trial, inputs=inputs), request)


def trial_resources(settings: dict[str, Any], cluster: dict[str, float], nodes: list[dict[str, float]]) -> dict:
    """What one trial asks Ray for. A trial that drives Ray Train workers only needs half a CPU (its
    workers ask for their own CPUs and GPUs); a trial that trains itself takes its share of the
    cluster's CPUs (never more than one node has, or it would wait forever) and a GPU when the
    cluster has them (``gpus_per_trial``)."""
    if settings["workers_per_trial"]:
        return {"cpu": 0.5}
    node_cpus = max((n.get("CPU", 0) for n in nodes), default=1)
    cpus = settings.get("cpus_per_trial") or max(1, min(node_cpus, cluster.get("CPU", 1) // settings["concurrency"]))
    gpus = settings.get("gpus_per_trial", "auto")
    gpus = (1 if cluster.get("GPU", 0) >= 1 else 0) if gpus == "auto" else gpus
    return {"cpu": cpus, "gpu": gpus} if gpus else {"cpu": cpus}


def _start_ray(workers_per_trial: int, progress: bool) -> None:
    import os

    from raylsl.cluster import init_ray

    # A trial that drives Ray Train workers holds 0.5 CPU itself: give a local Ray the logical room
    # (the workers do the computing), or Tune waits forever for a worker group that cannot start.
    cpus = os.cpu_count() or 1
    init_ray(progress, num_cpus=max(cpus, workers_per_trial + 1) if workers_per_trial else cpus)
