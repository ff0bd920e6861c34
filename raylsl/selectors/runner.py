"""Running a selector: calibration sampling, the score cache, and the choice.

Scores depend on the model's content, the calibration examples (size, seed), the selector and its
options, the LoRA target modules and the token budget, never on N, nor on whether the blocks were
scored whole or one at a time (`raylsl.selectors.streaming`): they are cached as
``<fingerprint>.json`` in the run's storage (``STORAGE/score-cache``, where every node and later
runs and sweeps find them), else under ``~/.cache/raylsl/scores`` (or ``$RAYLSL_SCORE_CACHE``), and
reused for every N in a sweep. An entry that cannot be read (a crash cut it short) is a miss:
recomputed and rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raylsl.config import CalibrationSettings, LoraSettings, TrainSettings
from raylsl.data import MCExample
from raylsl.errors import RaylslError
from raylsl.fetch import cache_dir
from raylsl.selectors.base import Budget, LayerScores, ScoringContext, Selector
from raylsl.storage import Storage


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection: scores, chosen blocks, and what it cost."""

    scores: LayerScores
    layers: list[int]
    seconds: float
    """Wall time of scoring (0-ish on a cache hit) plus choosing."""
    cached: bool
    placement: dict[str, Any] = field(default_factory=dict, compare=False)
    """Where the blocks were scored: the Ray node (when a Ray task scored them), the device, and
    whether one block at a time (``streamed``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.to_dict(), "layers": self.layers, "seconds": self.seconds, "cached": self.cached,
                "placement": self.placement}


SCORE_CACHE_ENV = "RAYLSL_SCORE_CACHE"


def score_cache(storage: str | None = None) -> Storage:
    """Where scores are cached: ``$RAYLSL_SCORE_CACHE`` when set, else ``STORAGE/score-cache`` for a
    run or sweep with ``storage=``, else ``~/.cache/raylsl/scores`` on this machine."""
    override = os.environ.get(SCORE_CACHE_ENV)
    if override:
        return Storage(override)
    return Storage(storage).child("score-cache") if storage else Storage(cache_dir() / "scores")


def calibration_sample(train: list[MCExample], size: int, seed: int) -> list[MCExample]:
    """``size`` examples drawn from the TRAIN split with a fixed seed (all of them if fewer)."""
    if size >= len(train):
        return list(train)
    return random.Random(seed).sample(train, size)


def model_fingerprint(model: nn.Module) -> str:
    """A cheap content hash: the config plus a strided sample of every parameter."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        # Where the model was loaded from, and by which transformers, is not the model: without
        # them every machine and user shares one cache entry per model.
        fields = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            digest.update(name.encode())
            digest.update(flat[:: max(1, flat.numel() // 64)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_selector(selector: Selector, budget: Budget, num_blocks: int, ctx: ScoringContext | None,
                 key: dict[str, Any] | None, use_cache: bool = True, cache: Storage | None = None,
                 exclude: tuple[int, ...] = ()) -> Selection:
    """Scores (from the cache when ``key`` was seen before) and chooses.

    Args:
        selector: a built selector.
        budget: the choice rule.
        num_blocks: L.
        ctx: scoring inputs; only needed when ``selector.needs_data``.
        key: everything the scores depend on besides the selector (model and calibration
            fingerprints, sizes); None for heuristics.
        use_cache: read and write the score cache.
        cache: where the cache is (default: `score_cache`).
        exclude: blocks never to choose (the model does not read their output), marked excluded
            in the scores (after the cache: the cached scores are the selector's own).
    """
    started = time.perf_counter()
    cached = False
    if selector.needs_data:
        full_key = {**key, "selector": selector.name, "options": dataclasses.asdict(selector.config)}
        fingerprint = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:24]
        cache = cache or score_cache()
        entry = f"{fingerprint}.json"
        scores = _cached_scores(cache, entry) if use_cache else None
        cached = scores is not None
        if scores is None:
            was_training = ctx.model.training
            ctx.model.eval()  # no dropout while measuring
            scores = dataclasses.replace(selector.score(ctx, num_blocks), fingerprint=fingerprint)
            ctx.model.train(was_training)
            if use_cache:
                cache.write_json(entry, scores.to_dict())
    else:
        scores = selector.score(None, num_blocks)
    if exclude:
        scores = dataclasses.replace(scores, excluded=tuple(sorted({*scores.excluded, *exclude})))
    layers = selector.choose(scores, budget)
    return Selection(scores, layers, time.perf_counter() - started, cached)


def select_blocks(model: nn.Module, blocks: nn.ModuleList, objective: Any, train_examples: list[MCExample],
                  selector: Selector, budget: Budget, calibration: CalibrationSettings,
                  target_modules: tuple[str, ...] | None, max_length: int, use_cache: bool = True,
                  validation: list[MCExample] = (), blocks_path: str = "", lora: LoraSettings | None = None,
                  train_settings: TrainSettings | None = None, model_key: str | None = None, stream=None,
                  cache: Storage | None = None, exclude: tuple[int, ...] = ()) -> Selection:
    """Runs ``selector`` on calibration examples drawn (seeded) from the train split and chooses.

    Args:
        target_modules: LoRA target leaf names; None: `raylsl.lora.default_target_modules`.
        max_length: the objective's token budget (part of the cache key).
        validation, blocks_path, lora, train_settings: for selectors that train while scoring
            (Flexora's search stage).
        model_key: what the model is, in the cache key; None: `model_fingerprint` of ``model``.
        stream: a `raylsl.selectors.streaming.BlockStream` whose skeleton ``model`` is: score one
            block at a time.
        cache: where scores are cached (default: `score_cache`).
        exclude: blocks never to choose (`run_selector`).
    """
    from raylsl.lora import default_target_modules

    if budget.n is not None and selector.uses_budget:
        budget.count(len(blocks))  # an impossible budget fails before any scoring work
    examples = calibration_sample(train_examples, calibration.size, calibration.seed)
    targets = tuple(target_modules or default_target_modules(blocks, getattr(getattr(model, "config", None),
                                                                                "model_type", None)))
    ctx = key = None
    if selector.needs_data:
        ctx = ScoringContext(model, blocks, objective, examples, calibration.batch_size, targets, blocks_path,
                             list(train_examples), list(validation), lora or LoraSettings(),
                             train_settings or TrainSettings(), calibration.seed, stream,
                             stream.device if stream is not None else None)
        key = {**selection_key(model_key or model_fingerprint(model), examples, calibration.size, calibration.seed,
                               targets, max_length),
               **selector.cache_context(ctx)}
    return run_selector(selector, budget, len(blocks), ctx, key, use_cache, cache, exclude)


def examples_fingerprint(examples: list[MCExample]) -> str:
    """A hash of the examples' contents, their images' bytes included."""
    digest = lambda image: hashlib.sha256(image).hexdigest()  # noqa: E731 (JSON has no bytes)
    text = json.dumps([dataclasses.astuple(ex) for ex in examples], default=digest)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def selection_key(model_key: str, calibration: list[MCExample], size: int, seed: int,
                  target_modules: tuple[str, ...], max_length: int) -> dict[str, Any]:
    return {"model": model_key, "calibration": examples_fingerprint(calibration), "calibration_size": size,
            "calibration_seed": seed, "target_modules": sorted(target_modules), "max_length": max_length}


def _cached_scores(cache: Storage, entry: str) -> LayerScores | None:
    """The scores cached as ``entry``; None when there are none, or when the entry cannot be read."""
    if not cache.is_file(entry):
        return None
    try:
        return LayerScores.from_dict(cache.read_json(entry))
    except (RaylslError, ValueError, KeyError, TypeError):  # cut short, or not raylsl's scores
        print(f"raylsl: the cached scores {cache.uri_of(entry)} cannot be read; computing them again", file=sys.stderr,
              flush=True)
        return None
