"""The Python entry points: `select_layers`, `estimate`, `sweep_report`."""

from __future__ import annotations

from typing import Any

from torch import nn

from raylsl.config import CalibrationSettings, DataSettings, TaskSettings
from raylsl.data import GenExample, MCExample, TaskSplits, load_task
from raylsl.errors import ConfigError
from raylsl.models import find_blocks, model_kind, resolve_model
from raylsl.objective import make_objective
from raylsl.selectors import Budget, Selection, build_selector, check_budget, select_blocks


def select_layers(model: str | nn.Module, data: str | TaskSplits | list[MCExample], selector: str = "cka",
                  n: int | float | None = None, *, threshold: float | None = None, mass: float | None = None,
                  tokenizer: Any = None, options: dict[str, Any] | None = None, calibration_size: int = 128,
                  calibration_seed: int = 0, batch_size: int = 16, target_modules: tuple[str, ...] | None = None,
                  blocks_path: str | None = None, max_length: int = 128, use_cache: bool = True) -> Selection:
    """Scores a model's blocks and chooses which to adapt.

    Args:
        model: a model name (``smollm2-135m``, a directory, a hub id) or a loaded HF model
            (then ``tokenizer`` is required).
        data: a task name/path, a `TaskSplits` (its train split is used), or training examples.
        selector: a registered selector name (`raylsl.selectors.available_selectors()`).
        n: block count (15) or fraction of the blocks (0.5); or give ``threshold``/``mass``.
        options: the selector's options, e.g. ``{"pooling": "mean"}`` for cka.
        calibration_size, calibration_seed: the seeded draw from the train examples.

    Returns:
        A `Selection` with ``.scores`` (`LayerScores`), ``.layers`` (sorted indices),
        ``.seconds`` and ``.cached``.

    Raises:
        RaylslError: unknown selector/model/task, or a budget the model cannot satisfy.
    """
    chosen = build_selector(selector, options)
    budget = Budget(n, threshold, mass)
    check_budget(chosen, budget)
    if isinstance(model, str):
        spec = resolve_model(model)
        model, tokenizer = spec.load()
        kind = spec.kind
    elif tokenizer is None:
        raise ConfigError("select_layers(model=<nn.Module>) needs tokenizer=")
    else:
        kind = model_kind(model.config)
    if isinstance(data, str):
        data = load_task(TaskSettings(name=data), DataSettings())
    train = data.train if isinstance(data, TaskSplits) else list(data)
    validation = data.validation if isinstance(data, TaskSplits) else []
    path, blocks = find_blocks(model, blocks_path)
    objective = make_objective(kind, tokenizer, max_length, generative=bool(train) and isinstance(train[0], GenExample))
    return select_blocks(model, blocks, objective, train, chosen, budget,
                         CalibrationSettings(calibration_size, calibration_seed, batch_size),
                         target_modules, max_length, use_cache, validation=validation, blocks_path=path)


def estimate(config: str | dict | None = None, overrides: list[str] | dict | None = None, *, gpus: int | None = None,
             gpu_memory: str | None = None, target_tokens: int | None = None):
    """What a run needs per GPU (or of this machine), from the model's config alone: what
    ``raylsl estimate`` prints, as a `raylsl.fit.Estimate` (``.fits``, ``.configured.terms``,
    ``.options``, ``.suggestion``, ``.to_dict()``).

    Args:
        config: a YAML path, a dict of dotted keys (``{"model": "llama-3.1-8b"}``), or None.
        overrides: ``key=value`` strings or a dict, applied on top.
        gpus, gpu_memory: data-parallel GPUs and each one's memory (``"80GB"``).
    """
    from raylsl.config import parse_overrides
    from raylsl.plan import load_run_config
    from raylsl.recipes.estimate import estimate_run

    if isinstance(config, dict):
        config, overrides = None, {**config, **parse_overrides(overrides)}
    return estimate_run(load_run_config(config, overrides), gpus, gpu_memory, target_tokens)


def sweep_report(sweep_dir: str, objectives: str | list | dict | None = None):
    """A finished (or running) sweep's report, its front cut on the sweep's own objectives or on
    ``objectives`` (2 or 3 recorded columns: ``"val_acc,peak_memory,step_time"``), without training:
    what ``raylsl report --objectives`` writes, as a `raylsl.report.SweepReport`
    (``.pareto_front()``, ``.recommend(eps=0.01, cost="peak_memory")``, ``.plot(path)``).

    Raises:
        ConfigError: not a sweep, an unknown objective, or one no finished trial recorded.
    """
    from raylsl.report import load

    return load(sweep_dir, objectives)
