"""Search space files (``search_spaces/*.yaml``): what a sweep varies and how it runs.

    base: ../configs/sarcasm-smollm2.yaml    # the run config every trial starts from (relative to this file)
    set: {train.steps: 60}                   # fixed overrides on it (optional)
    trials: 16                               # Tune samples, the all-blocks baseline included
    concurrency: 1                           # trials at once
    workers_per_trial: 0                     # 0: a trial trains in its own process; N: N Ray Train workers
    cpus_per_trial: null                     # a single-process trial's CPUs (default: a node's share)
    gpus_per_trial: auto                     # a single-process trial's GPUs (auto: 1 when the cluster has GPUs)
    sampler: tpe                             # tpe (Optuna's multi-objective TPE), random or nsga2
    n_startup_trials: null                   # TPE's random trials before it models (Optuna's default: 10)
    population_size: null                    # NSGA-II's generation size (default: trials // 8, 4 to 50)
    scheduler: none                          # none, or pareto_halving: stop dominated trials early
    metric: auto                             # what trials are ranked by: auto (the task's: acc for multiple
                                             # choice, exact_match for generative tasks with answers, else
                                             # loss), acc, exact_match or loss (minimised)
    eta: 3                                   # pareto_halving keeps the best 1/eta at each rung
    rungs: 2                                 # rungs at eta**-rungs, ..., 1/eta of a trial's steps
    seed: 0
    optuna_storage: null                     # an Optuna RDB URL; default: the study lives in the sweep's storage
    points: []                               # extra fixed trials to run first
    parameters:
      selector: {choices: [all, cka, activation, ist]}
      n: {low: 0.1, high: 0.9}               # floats: a fraction of the blocks; ints: a count
      lora.r: {choices: [4, 8, 16]}
      ist.mu: {low: 1.0, high: 100.0, log: true, when: {selector: ist}}

A parameter is any ``key=value`` override of a run (``lora.r``, ``train.lr``, ``cka.pooling``), or
``n``, which becomes the block budget of a static selector, ``ist.n_update`` for IST and
``lisa.n_active`` for LISA. ``when`` makes a parameter conditional on another one's value: Optuna
asks for it only in trials where the parent has that value (a define-by-run space).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from raylsl.errors import ConfigError

SETTINGS = ("base", "set", "trials", "concurrency", "workers_per_trial", "cpus_per_trial", "gpus_per_trial", "sampler",
            "n_startup_trials", "population_size", "scheduler", "metric", "objectives", "eta", "rungs", "seed", "optuna_storage",
            "points", "parameters")
METRIC_CHOICES = ("auto", "acc", "exact_match", "loss")
PARAMETER_FIELDS = ("choices", "low", "high", "log", "step", "when")
SAMPLERS = ("tpe", "random", "nsga2")
SCHEDULERS = ("none", "pareto_halving")
# Where the block budget `n` goes for selectors that do not take `n` itself.
BUDGET_KEY = {"ist": "ist.n_update", "lisa": "lisa.n_active"}


@dataclass(frozen=True)
class Parameter:
    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, tuple] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        return all(values.get(parent) in allowed for parent, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        """Asks an Optuna trial for this parameter's value."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def samples(self) -> list[Any]:
        """Representative values, to validate the space against the run config up front."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    base: Path | None
    fixed: dict[str, Any]
    parameters: tuple[Parameter, ...]
    trials: int = 16
    concurrency: int = 1
    workers_per_trial: int = 0
    cpus_per_trial: float | None = None
    gpus_per_trial: float | str = "auto"
    sampler: str = "tpe"
    n_startup_trials: int | None = None
    population_size: int | None = None
    scheduler: str = "none"
    metric: str = "auto"
    objectives: dict[str, str] | None = None
    """2 or 3 objectives and their directions, the validation metric first (`raylsl.report.objectives`);
    None: the validation metric and trainable parameters."""
    eta: int = 3
    rungs: int = 2
    seed: int = 0
    optuna_storage: str | None = None
    points: tuple[dict[str, Any], ...] = ()

    def __call__(self, trial) -> None:
        """Optuna's define-by-run space: parameters in file order, conditional ones only when their
        parents hold the listed values."""
        values: dict[str, Any] = {}
        for param in self.parameters:
            if param.active(values):
                values[param.name] = param.suggest(trial)

    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def selectors(self) -> tuple:
        return next((p.choices for p in self.parameters if p.name == "selector" and p.choices), ())

    def selector_variants(self) -> list[dict[str, Any]]:
        """Every combination of the space's discrete parameters (all but the budget ``n``) under
        each selector it can pick: everything a selector's scores could depend on that the space
        varies in steps. (Parameters sampled from a range are not enumerable: `ranged` lists them.)"""
        variants = []
        for selector in self.selectors():
            values = {"selector": selector}
            discrete = [p for p in self.parameters
                        if p.name not in ("selector", "n") and p.choices is not None and p.active(values)]
            for combo in itertools.product(*(p.choices for p in discrete)):
                variants.append({**values, **dict(zip((p.name for p in discrete), combo))})
        return variants

    def ranged(self, selector: str) -> list[Parameter]:
        """Parameters active under ``selector`` that are sampled from a range."""
        return [p for p in self.parameters if p.name not in ("selector", "n") and p.choices is None
                and p.active({"selector": selector})]

    def baseline(self, base_rank: int) -> dict[str, Any]:
        """The all-blocks LoRA point every sweep starts with (at the base config's rank when the
        space varies the rank and allows it)."""
        point: dict[str, Any] = {"selector": "all"}
        for param in self.parameters:
            if param.name == "lora.r" and param.active(point):
                fits = base_rank in param.choices if param.choices is not None else param.low <= base_rank <= param.high
                if fits:
                    point["lora.r"] = base_rank
        return point


def trial_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled values as run-config overrides (``n`` goes where its selector reads it)."""
    overrides = dict(params)
    selector = overrides.get("selector")
    if "n" in overrides:
        n = overrides.pop("n")
        if selector in BUDGET_KEY:
            overrides[BUDGET_KEY[selector]] = n
        elif selector not in (None, "all"):
            overrides["n"] = n
    if "selector" in overrides:
        overrides["layers"] = "all"  # the selector chooses (a base config's layers= would clash)
    if selector == "all":
        overrides.pop("selector")  # plain LoRA on every block
    return overrides


def load_space(path: str | Path) -> SearchSpace:
    """Reads and validates a search space file; every problem is one `ConfigError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist (see search_spaces/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SETTINGS)}")
    where = str(path)
    for key in raw:
        if key not in SETTINGS:
            hint = " (the Optuna study's database is optuna_storage:; the sweep's own storage is the run setting storage=)" if key == "storage" else ""
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(SETTINGS)}{hint}")
    raw_params = raw.get("parameters") or {}
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{where}: 'parameters' must map at least one parameter name to its range")
    parameters = tuple(_parameter(where, name, spec) for name, spec in raw_params.items())
    _check_conditions(where, parameters)
    base = raw.get("base")
    base_path = (path.parent / base).resolve() if base else None
    if base_path is not None and not base_path.is_file():
        raise ConfigError(f"{where}: base: {base} does not exist (relative paths start at {path.parent})")
    space = SearchSpace(
        path=path, base=base_path, fixed=dict(raw.get("set") or {}), parameters=parameters,
        trials=_positive(where, "trials", raw.get("trials", 16)),
        concurrency=_positive(where, "concurrency", raw.get("concurrency", 1)),
        workers_per_trial=_count(where, "workers_per_trial", raw.get("workers_per_trial", 0)),
        cpus_per_trial=_optional_number(where, "cpus_per_trial", raw.get("cpus_per_trial")),
        gpus_per_trial=_gpus(where, raw.get("gpus_per_trial", "auto")),
        sampler=_sampler(where, raw.get("sampler", "tpe")),
        n_startup_trials=None if raw.get("n_startup_trials") is None else _count(where, "n_startup_trials",
                                                                                   raw["n_startup_trials"]),
        population_size=None if raw.get("population_size") is None else _at_least(where, "population_size",
                                                                                  raw["population_size"], 2),
        scheduler=scheduler_name(where, raw.get("scheduler", "none")),
        metric=_choice(where, "metric", raw.get("metric", "auto"), METRIC_CHOICES),
        objectives=_objectives(where, raw.get("objectives"), raw.get("metric", "auto")),
        eta=_at_least(where, "eta", raw.get("eta", 3), 2), rungs=_positive(where, "rungs", raw.get("rungs", 2)),
        seed=int(raw.get("seed", 0)), optuna_storage=raw.get("optuna_storage"), points=tuple(raw.get("points") or ()),
    )
    for point in space.points:
        unknown = [k for k in point if k not in space.names()]
        if unknown:
            raise ConfigError(f"{where}: points: {unknown[0]!r} is not one of the parameters "
                              f"({', '.join(space.names())})")
    return space


def check_against_config(space: SearchSpace, overrides: dict[str, Any], num_blocks: int | None = None) -> None:
    """Every parameter value must make a valid run config: catches unknown keys, unknown selectors
    and out-of-range values before any trial starts.

    Args:
        overrides: the sweep's fixed run settings (base file applied separately by the caller).
    """
    from raylsl.plan import load_run_config

    selectors = next((p.samples() for p in space.parameters if p.name == "selector"), [None])
    for param in space.parameters:
        for value in param.samples():
            for selector in ([value] if param.name == "selector" else selectors):
                trial = {"selector": selector} if selector is not None else {}
                trial[param.name] = value
                if any(trial.get(parent) not in allowed for parent, allowed in param.when.items()):
                    continue
                if "n" not in trial and trial.get("selector") not in (None, "all", *BUDGET_KEY):
                    trial["n"] = 1
                try:
                    load_run_config(str(space.base) if space.base else None, {**overrides, **trial_overrides(trial)})
                except ConfigError as exc:
                    raise ConfigError(f"{space.path}: parameters.{param.name} = {value!r}: {exc}") from None


def _parameter(where: str, name: str, spec: Any) -> Parameter:
    key = f"{where}: parameters.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
    for field_name in spec:
        if field_name not in PARAMETER_FIELDS:
            raise ConfigError(f"{key}: unknown field {field_name!r}; known: {', '.join(PARAMETER_FIELDS)}")
    when = {}
    for parent, allowed in (spec.get("when") or {}).items():
        when[parent] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    if "choices" in spec:
        if "low" in spec or "high" in spec:
            raise ConfigError(f"{key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: choices must be a non-empty list")
        return Parameter(name, choices=tuple(choices), when=when)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: needs choices, or both low and high")
    low, high = spec["low"], spec["high"]
    for label, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key}: {label}={v!r} must be a number")
    if not low < high:
        raise ConfigError(f"{key}: empty range low={low} >= high={high}")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"{key}: log=true needs low > 0")
    return Parameter(name, low=low, high=high, log=bool(spec.get("log", False)), step=spec.get("step"), when=when)


def _check_conditions(where: str, parameters: tuple[Parameter, ...]) -> None:
    seen: dict[str, Parameter] = {}
    for param in parameters:
        for parent, allowed in param.when.items():
            if parent not in seen:
                raise ConfigError(f"{where}: parameters.{param.name}: when: {parent} is not a parameter listed "
                                  f"before it; conditional parameters follow their parent")
            parent_param = seen[parent]
            if parent_param.choices is not None:
                missing = [v for v in allowed if v not in parent_param.choices]
                if missing:
                    raise ConfigError(f"{where}: parameters.{param.name}: when: {parent}={missing[0]!r} is not "
                                      f"among {parent}'s choices {list(parent_param.choices)}")
        seen[param.name] = param


def _objectives(where: str, raw: Any, metric: str) -> dict[str, str] | None:
    """The ``objectives:`` list, checked as far as the file tells: with ``metric: auto`` the
    validation metric is the one the list names (the sweep checks it against the task's)."""
    from raylsl.report import METRICS, objectives

    if raw is None:
        return None
    if metric == "auto":
        named = [k for item in (raw if isinstance(raw, list) else [raw]) if isinstance(item, dict) for k in item]
        metric = next((k[4:] for k in named if k.startswith("val_") and k[4:] in METRICS), "acc")
    return objectives(metric, raw, f"{where}: objectives")


def _positive(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key}={value!r} must be a positive integer")
    return value


def _count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer >= 0")
    return value


def _optional_number(where: str, key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: {key}={value!r} must be a number > 0 (or null)")
    return float(value)


def _gpus(where: str, value: Any) -> float | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}: gpus_per_trial={value!r} must be auto or a number >= 0")
    return float(value)


def _sampler(where: str, value: Any) -> str:
    return _choice(where, "sampler", value, SAMPLERS)


def scheduler_name(where: str, value: Any) -> str:
    return _choice(where, "scheduler", value, SCHEDULERS)


def _choice(where: str, key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: {key}={value!r}; choose one of {', '.join(choices)}")
    return value


def _at_least(where: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer >= {low}")
    return value
