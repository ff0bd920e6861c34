"""The plan of a run: everything the driver resolves before anything trains, as one serialisable
object that a single-process run, a Ray Train worker and a Tune trial all consume.

The flow is config -> plan (model, data, blocks) -> engine (single process, DDP, ZeRO) -> results
-> report. A plan holds no path that only the driver can read: the task's examples travel in it,
a local model directory travels as its files (`ModelSource.shipped`), a DeepSpeed JSON file as its
contents. Every check that needs more than the config's own fields (selector options and budget,
the DeepSpeed spec) happens in `check_config`, before anything is written.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from raylsl.config import RunConfig, deepspeed_config, load_config
from raylsl.data import TaskSplits, load_task, split_examples
from raylsl.errors import ConfigError
from raylsl.fit import DoesNotFit, check_fit, target_device
from raylsl.lora import parse_layers
from raylsl.models import VLM, ModelSpec, find_blocks, resolve_model, shipped_directory
from raylsl.models.loading import load_options
from raylsl.models.vision import unread_blocks
from raylsl.selectors import (Budget, LayerScores, Selection, build_selector, check_budget, run_selector,
                              select_blocks)

def check_config(config: RunConfig) -> None:
    """The checks a config cannot make on its own fields: selector options and budget, DeepSpeed."""
    for name, options in config.selector_options.items():
        build_selector(name, options)
    if config.selector is not None:
        selector = build_selector(config.selector, config.selector_options.get(config.selector))
        check_budget(selector, Budget(config.n, config.threshold, config.mass))
        selector.require_validation(config.data.val_size)
    if config.deepspeed is not None:
        deepspeed_config(config.deepspeed)


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """`raylsl.config.load_config` followed by `check_config`: what every entry point uses."""
    config = load_config(path, overrides)
    check_config(config)
    return config


@dataclass(frozen=True)
class ModelSource:
    """How any node gets the base model: by a name it resolves itself (a named model, which each
    node fetches from the package index; a hub id), or, for a local directory, by its files sent
    through Ray's object store (`shipped`) and written once per node into raylsl's cache."""

    name: str
    files: Any = None
    """A Ray object reference to ``{relative path: bytes}``, or None."""
    digest: str | None = None

    def spec(self, kind: str = "auto") -> ModelSpec:
        if self.files is None:
            return resolve_model(self.name, kind)
        import ray

        return resolve_model(str(shipped_directory(self.digest, ray.get(self.files))), kind)

    def shipped(self) -> "ModelSource":
        """This source, with a local model directory's files put into Ray's object store (call it
        with Ray initialised, before handing the plan to workers on other nodes)."""
        directory = Path(self.name).expanduser()
        if self.files is not None or not directory.is_dir():
            return self
        import ray

        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        digest = hashlib.sha256()
        for rel, data in files.items():
            digest.update(rel.encode())
            digest.update(hashlib.sha256(data).digest())
        return replace(self, files=ray.put(files), digest=digest.hexdigest()[:24])


@dataclass(frozen=True)
class Plan:
    """A validated run, resolved: what to train, on which blocks, with which data."""

    config: RunConfig
    name: str
    """The run's name (its directory name locally and in storage)."""
    storage: str
    """URI of the run's storage directory (the local run directory without ``storage=``)."""
    model: ModelSource
    kind: str
    blocks_path: str
    num_blocks: int
    layers: tuple[int, ...]
    task: TaskSplits
    deepspeed: dict[str, Any] | None = None
    """The resolved DeepSpeed config (read from its file on the driver)."""
    selection: Selection | None = field(default=None, compare=False)
    """How a selector chose ``layers``; None when the config lists them."""
    checkpointing: bool | None = False
    """Activation checkpointing from the lowest block that can train (`raylsl.fit.check_fit`
    resolved ``auto``); None: ``auto`` where the driver cannot see the workers' devices, decided by
    each worker against its own."""

    @property
    def zero_stage(self) -> int | None:
        return None if self.deepspeed is None else int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))


def score_key(config: RunConfig) -> str:
    """What a static selector's scores depend on, from the config alone (never the budget): a
    sweep scores each distinct key once and hands the scores to its trials by this key."""
    selector = build_selector(config.selector, config.selector_options.get(config.selector))
    parts = {"model": asdict(config.model), "blocks_path": config.blocks_path, "task": asdict(config.task),
             "data": asdict(config.data), "calibration": asdict(config.calibration),
             "targets": config.lora.target_modules, "selector": config.selector, "options": asdict(selector.config),
             **selector.config_key(config)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def build_plan(config: RunConfig, name: str, storage: str, layers: list[int] | None = None,
               keep_model: bool = False, examples: list | None = None,
               scores: dict[str, LayerScores] | None = None,
               fit: bool = True) -> tuple[Plan, tuple[torch.nn.Module, Any] | None]:
    """Resolves ``config`` into a `Plan`, running the selector if one is configured.

    The model is loaded here only when it is needed: to score blocks (a selector that reads data),
    or to train in this process (``keep_model``: it is then returned with its tokenizer, on this
    machine's accelerator). A run whose workers train elsewhere only reads the model's structure,
    and a model loaded to score blocks is released before the workers start. Once the blocks are
    known, and before the model loads to train, the run's memory is checked against where it
    trains (`raylsl.fit.check_fit`, when this process can see that device).

    Args:
        layers: blocks already chosen (a resumed run's); skips selection.
        keep_model: return ``(model, tokenizer)`` to train in this process.
        examples: the task's examples, already read (a sweep trial's, sent by the driver); they are
            split with the config's data settings.
        scores: static selectors' scores by `score_key`, already computed (a sweep's): a trial
            whose key is there chooses from them without loading data or scoring.
        fit: check that training fits (off for plans that only score or evaluate).

    Raises:
        RaylslError: bad input (model, task, selector, budget, DeepSpeed spec).
        DoesNotFit: the run cannot fit where it trains.
    """
    check_config(config)
    spec = resolve_model(config.model.name, config.model.kind)
    task = split_examples(config.task.name, examples, config.data) if examples is not None else load_task(config.task, config.data)
    if task.has_images and spec.kind != VLM:
        raise ConfigError(f"task {config.task.name} has images, and model {config.model.name} reads text only "
                          f"({spec.kind}): train a vision-language model (model.kind=vlm; docs/vision.md)")
    selector = build_selector(config.selector, config.selector_options.get(config.selector)) if config.selector else None
    known = (scores or {}).get(score_key(config)) if selector is not None and selector.needs_data else None
    scoring = layers is None and selector is not None and selector.needs_data and known is None
    loaded = load_base(spec, config, local_device()) if scoring else None
    structure = loaded[0] if loaded else spec.skeleton()
    blocks_path, blocks = find_blocks(structure, config.blocks_path)
    num_blocks = len(blocks)
    unread = unread_blocks(structure.config, blocks_path, num_blocks)
    del structure
    selection = None
    if layers is None and selector is None:
        layers = parse_layers(config.layers, num_blocks)
    elif layers is None and known is not None:
        selection = Selection(known, selector.choose(known, Budget(config.n, config.threshold, config.mass)), 0.0, True)
        layers = selection.layers
    elif layers is None:
        selection = _select(config, selector, spec.kind, loaded, blocks, blocks_path, task, tuple(unread))
        layers = selection.layers
    del blocks
    if set(layers) & set(unread):
        raise ConfigError(f"blocks {sorted(set(layers) & set(unread))} of {blocks_path} do not feed the language model "
                          f"(it reads the vision tower's features before them: vision_feature_layer); choose among "
                          f"0-{min(unread) - 1} with layers=")
    try:  # before the model loads to train (a model loaded only to score is released on refusal)
        device = target_device(config) if fit else None
        checkpointing = check_fit(config, device, list(layers), task.generative)
    except DoesNotFit:
        loaded = None
        _release()
        raise
    plan = Plan(config, name, storage, ModelSource(config.model.name), spec.kind, blocks_path, num_blocks, tuple(layers),
                task, deepspeed_config(config.deepspeed) if config.deepspeed else None, selection, checkpointing)
    if keep_model and loaded is None:
        loaded = load_base(spec, config, local_device())
    if loaded is not None and not keep_model:
        del loaded
        _release()
        return plan, None
    return plan, loaded


def _select(config: RunConfig, selector, kind: str, loaded, blocks, blocks_path: str, task: TaskSplits,
            unread: tuple[int, ...]) -> Selection:
    """Runs the configured selector (on this machine's accelerator when it reads data), never
    choosing the ``unread`` blocks (`raylsl.models.vision.unread_blocks`)."""
    budget = Budget(config.n, config.threshold, config.mass)
    if not selector.needs_data:
        return run_selector(selector, budget, len(blocks), None, None, exclude=unread)
    from raylsl.objective import run_objective

    model, tokenizer = loaded
    objective = run_objective(kind, tokenizer, config, task.generative)
    return select_blocks(model, blocks, objective, task.train, selector,
                         budget, config.calibration, config.lora.target_modules, config.data.max_length,
                         use_cache=config.score_cache, validation=task.validation, blocks_path=blocks_path,
                         lora=config.lora, train_settings=config.train, exclude=unread)


def load_base(spec: ModelSpec, config: RunConfig, device: torch.device,
              sharded: bool = False) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` loaded as the run's ``model.*`` settings say, decided for ``device``
    (the dtype, quantization and kernel this process can run), on ``device``."""
    return spec.load(load_options(config.model, device, config.train.precision, sharded))


def local_device() -> torch.device:
    """This machine's accelerator (the driver scores blocks and single-process runs train there)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _release() -> None:
    """Frees the driver's copy of the model (and the GPU memory it held) before workers train."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
