"""The plan of a run: everything the driver resolves before anything trains, as one serialisable
object that a single-process run, a Ray Train worker and a Tune trial all consume.

The flow is config -> plan (model, data, blocks) -> engine (single process, DDP, ZeRO) -> results
-> report. A plan holds no path that only the driver can read: the task's examples travel in it,
a model in storage by its URI, a small local model directory as its files (`ModelSource.shipped`;
a large one is refused, naming `raylsl upload-model`), a DeepSpeed JSON file as its contents.
Blocks are scored where `raylsl.scoring` places them (on a Ray cluster, where the workers train).
Every check that needs more than the config's own fields (selector options and budget, the
DeepSpeed spec, a model directory's size) happens in `check_config`, before anything is written.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from raylsl.cluster import ray_running
from raylsl.config import RunConfig, deepspeed_config, load_config
from raylsl.data import TaskSplits, load_task, split_examples
from raylsl.errors import ConfigError, ModelError
from raylsl.fit import DoesNotFit, check_fit, target_device
from raylsl.lora import parse_layers
from raylsl.models import VLM, ModelSpec, find_blocks, resolve_model, shipped_directory
from raylsl.models.registry import content_digest, directory_bytes
from raylsl.models.vision import unread_blocks
from raylsl.scoring import load_base, local_device, score_here, score_in_ray, scores_elsewhere
from raylsl.selectors import Budget, LayerScores, Selection, build_selector, check_budget, run_selector


def check_config(config: RunConfig) -> None:
    """The checks a config cannot make on its own fields: selector options and budget, DeepSpeed,
    and a local model directory too large to send to Ray workers."""
    for name, options in config.selector_options.items():
        build_selector(name, options)
    if config.selector is not None:
        selector = build_selector(config.selector, config.selector_options.get(config.selector))
        check_budget(selector, Budget(config.n, config.threshold, config.mass))
        selector.require_validation(config.data.val_size)
        if selector.differentiates_base and config.model.quantization != "none":
            raise ConfigError(f"selector={selector.name} scores the gradients of the base weights, which "
                              f"model.quantization={config.model.quantization} weights do not have: score with "
                              f"model.quantization=none (model.dtype=bfloat16, train.activation_checkpointing=on), "
                              f"or with selector=cka or activation, which read one block at a time")
        if config.calibration.stream == "on" and selector.needs_data and not selector.streams:
            raise ConfigError(f"calibration.stream=on: selector={selector.name} cannot score one block at a time (only "
                              f"cka and activation can); use calibration.stream=auto or off")
    if config.deepspeed is not None:
        deepspeed_config(config.deepspeed)
    if config.workers:
        ModelSource(config.model.name).check()


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """`raylsl.config.load_config` followed by `check_config`: what every entry point uses."""
    config = load_config(path, overrides)
    check_config(config)
    return config


SHIP_LIMIT = 2 * 10**9
"""The largest local model directory (bytes) sent to Ray's other nodes through the object store
(the driver holds it in memory, the object store copies it); larger ones belong in storage."""


@dataclass(frozen=True)
class ModelSource:
    """How any node gets the base model: by a name it resolves itself (a named model, which each
    node fetches from the package index; a storage URI or a hub id, which each node copies into
    its cache), or, for a small local directory, by its files sent through Ray's object store
    (`shipped`) and written once per node into raylsl's cache."""

    name: str
    files: Any = None
    """A Ray object reference to ``{relative path: bytes}``, or None."""
    digest: str | None = None

    def spec(self, kind: str = "auto") -> ModelSpec:
        if self.files is None:
            return resolve_model(self.name, kind)
        import ray

        return resolve_model(str(shipped_directory(self.digest, ray.get(self.files))), kind)

    def check(self) -> None:
        """Refuses a local directory too large to send through Ray's object store (`SHIP_LIMIT`),
        before anything is read or written.

        Raises:
            ModelError: naming the size and how to put the model in storage instead.
        """
        directory = self._directory()
        if directory is None or self.files is not None:
            return
        size = directory_bytes(directory)
        if size > SHIP_LIMIT:
            raise ModelError(
                f"model directory {self.name} is {size / 1e9:.1f} GB, more than the {SHIP_LIMIT / 1e9:.0f} GB a local "
                f"directory may send to Ray's other nodes through the object store: put it in storage every node reads, "
                f"`raylsl upload-model {self.name} s3://BUCKET/models`, and pass the model=s3://... URI it prints "
                f"(or model=file://PATH for a mount every node sees)")

    def shipped(self) -> "ModelSource":
        """This source, with a small local model directory's files put into Ray's object store
        (call it with Ray initialised, before handing the plan to workers on other nodes).

        Raises:
            ModelError: the directory is larger than `SHIP_LIMIT` (`check`).
        """
        directory = self._directory()
        if self.files is not None or directory is None:
            return self
        self.check()
        import ray

        files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
        digest = content_digest((rel, hashlib.sha256(data).digest()) for rel, data in files.items())
        return replace(self, files=ray.put(files), digest=digest)

    def _directory(self) -> Path | None:
        directory = Path(self.name).expanduser()
        return directory if directory.is_dir() else None


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
             "data": asdict(config.data), "calibration": _scored_calibration(config),
             "targets": config.lora.target_modules, "selector": config.selector, "options": asdict(selector.config),
             **selector.config_key(config)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _scored_calibration(config: RunConfig) -> dict[str, Any]:
    """The calibration settings scores depend on (whether they were streamed is not one)."""
    return {k: v for k, v in asdict(config.calibration).items() if k != "stream"}


def build_plan(config: RunConfig, name: str, storage: str, layers: list[int] | None = None,
               keep_model: bool = False, examples: list | None = None,
               scores: dict[str, LayerScores] | None = None,
               fit: bool = True) -> tuple[Plan, tuple[torch.nn.Module, Any] | None]:
    """Resolves ``config`` into a `Plan`, running the selector if one is configured.

    The model is loaded here only when it is needed: to score blocks (a selector that reads data;
    on a Ray cluster of more than this node, a Ray task scores them where the workers train, and
    this process never loads the weights: `raylsl.scoring`), or to train in this process
    (``keep_model``: it is then returned with its tokenizer, on this machine's accelerator). A run
    whose workers train elsewhere only reads the model's structure, and a model loaded to score
    blocks is released before the workers start. Once the blocks are known, and before the model
    loads to train, the run's memory is checked against where it trains (`raylsl.fit.check_fit`,
    when this process can see that device).

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
    source = ModelSource(config.model.name)
    if ray_running():  # a Ray task or a sweep's trials will need the model too
        source.check()
    task = split_examples(config.task.name, examples, config.data) if examples is not None else load_task(config.task, config.data)
    if task.has_images and spec.kind != VLM:
        raise ConfigError(f"task {config.task.name} has images, and model {config.model.name} reads text only "
                          f"({spec.kind}): train a vision-language model (model.kind=vlm; docs/vision.md)")
    selector = build_selector(config.selector, config.selector_options.get(config.selector)) if config.selector else None
    known = (scores or {}).get(score_key(config)) if selector is not None and selector.needs_data else None
    structure = spec.skeleton()
    blocks_path, blocks = find_blocks(structure, config.blocks_path)
    num_blocks = len(blocks)
    unread = tuple(unread_blocks(structure.config, blocks_path, num_blocks))
    del blocks, structure
    budget = Budget(config.n, config.threshold, config.mass)
    if layers is None and selector is not None and selector.uses_budget and budget.n is not None:
        budget.count(num_blocks)  # an impossible budget fails before any scoring (here or in a Ray task)
    selection = loaded = None
    if layers is None and selector is None:
        layers = parse_layers(config.layers, num_blocks)
    elif layers is None and known is not None:
        selection = Selection(known, selector.choose(known, budget), 0.0, True)
    elif layers is None and not selector.needs_data:
        selection = run_selector(selector, budget, num_blocks, None, None, exclude=unread)
    elif layers is None and scores_elsewhere():
        source = source.shipped()
        selection = score_in_ray(config, source, spec.kind, task, exclude=unread)
    elif layers is None:
        selection, loaded = score_here(config, source, spec.kind, task, keep=keep_model, exclude=unread)
        _release()  # what scoring held that training does not keep
    if selection is not None:
        layers = selection.layers
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
    plan = Plan(config, name, storage, source, spec.kind, blocks_path, num_blocks, tuple(layers), task,
                deepspeed_config(config.deepspeed) if config.deepspeed else None, selection, checkpointing)
    if keep_model and loaded is None:
        loaded = load_base(spec, config, local_device())
    return plan, loaded


def _release() -> None:
    """Frees what this process held to score (and the GPU memory it cached) before training."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
