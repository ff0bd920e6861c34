"""The selector interface, its registry, and the rules that turn scores into a block set.

A selector is a small class with a frozen config dataclass, registered once by the name YAML and
the CLI use. Static selectors score every block (higher = more important) from the frozen base
model and calibration data; a choice rule then keeps a set of blocks. Scores never depend on the
budget, so they are cached once and reused for every N in a sweep.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from raylsl.config import LoraSettings, TrainSettings, from_dict, register_option_section
from raylsl.callbacks import Callback
from raylsl.errors import ConfigError
from raylsl.models.vision import image_inputs


@dataclass(frozen=True)
class LayerScores:
    """Per-block scores of one method on one model and calibration set."""

    method: str
    scores: tuple[float, ...]
    """One score per block, higher = more important."""
    fingerprint: str
    """Hash of what the scores depend on (model, calibration data and size/seed, options)."""
    excluded: tuple[int, ...] = ()
    """Blocks whose score is undefined (e.g. zero-variance CKA input); never chosen by a rule."""
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    """Method-specific record, e.g. Flexora's alpha ``trajectory`` and ``search_seconds``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "LayerScores":
        return cls(raw["method"], tuple(raw["scores"]), raw["fingerprint"], tuple(raw["excluded"]),
                   raw.get("details", {}))


@dataclass(frozen=True)
class Budget:
    """How many blocks to keep: a count (``n=15``), a fraction of L (``n=0.5``), a score threshold,
    or a cumulative mass (the smallest set whose normalized scores sum to >= ``mass``)."""

    n: int | float | None = None
    threshold: float | None = None
    mass: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("n", "threshold", "mass") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one of n, threshold or mass, not {' and '.join(given)}")
        n = self.n
        if isinstance(n, bool) or (n is not None and not isinstance(n, (int, float))):
            raise ConfigError(f"n={n!r} must be a block count (15) or a fraction of the blocks (0.5)")
        if isinstance(n, int) and n <= 0:
            raise ConfigError(f"n={n} must be a positive block count")
        if isinstance(n, float) and not 0 < n <= 1:
            raise ConfigError(f"n={n}: a fraction of the blocks must be in (0, 1]; for a count give a whole number")
        if self.mass is not None and not 0 < self.mass <= 1:
            raise ConfigError(f"mass={self.mass} must be in (0, 1]")

    def count(self, num_blocks: int) -> int:
        """Blocks a count/ratio budget keeps for a model of ``num_blocks`` blocks."""
        if isinstance(self.n, float):
            k = math.floor(self.n * num_blocks)
            if k == 0:
                raise ConfigError(f"n={self.n} of {num_blocks} blocks rounds down to 0 blocks; use a larger fraction")
            return k
        if self.n > num_blocks:
            raise ConfigError(f"n={self.n} exceeds the model's {num_blocks} blocks; use n <= {num_blocks} or a fraction")
        return self.n


def check_budget(selector: "Selector", budget: Budget) -> None:
    """A selector that ranks blocks needs to be told how many to keep."""
    if selector.uses_budget and budget == Budget():
        raise ConfigError(f"selector={selector.name} needs a budget: n=15 (blocks), n=0.5 (fraction), "
                          f"threshold=... or mass=...")


def choose(scores: LayerScores, budget: Budget) -> list[int]:
    """Applies a choice rule; ties break toward the lower block index. Returns sorted indices."""
    num = len(scores.scores)
    candidates = [i for i in range(num) if i not in set(scores.excluded)]
    ranked = sorted(candidates, key=lambda i: (-scores.scores[i], i))
    if budget.threshold is not None:
        chosen = [i for i in ranked if scores.scores[i] >= budget.threshold]
    elif budget.mass is not None:
        total = sum(max(scores.scores[i], 0.0) for i in ranked)
        chosen, acc = [], 0.0
        for i in ranked:
            chosen.append(i)
            acc += max(scores.scores[i], 0.0)
            if total == 0 or acc / total >= budget.mass - 1e-12:
                break
    else:
        k = budget.count(num)
        if k > len(ranked):
            raise ConfigError(f"n={budget.n} asks for {k} blocks but only {len(ranked)} have a defined "
                              f"{scores.method} score (excluded: {list(scores.excluded)})")
        chosen = ranked[:k]
    if not chosen:
        raise ConfigError(f"the {scores.method} scores leave no block above the threshold; lower it")
    return sorted(chosen)


@dataclass
class ScoringContext:
    """What a selector may look at: the frozen base model and calibration batches from train."""

    model: nn.Module
    blocks: nn.ModuleList
    objective: Any
    calibration: list
    """Calibration examples (from the train split, seeded)."""
    batch_size: int
    target_modules: tuple[str, ...]
    """Leaf names of the linear layers LoRA would adapt."""
    blocks_path: str = ""
    train: list = field(default_factory=list)
    """The whole train split (Flexora's search stage trains on it)."""
    validation: list = field(default_factory=list)
    """The validation slice held out of train."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_settings: TrainSettings = field(default_factory=TrainSettings)
    seed: int = 0
    stream: Any = None
    """A `raylsl.selectors.streaming.BlockStream` when the blocks are scored one at a time (then
    ``model`` is a skeleton whose weights that stream loads block by block); None: the whole model."""
    device: torch.device | None = None
    """Where the batches go; None: where the model's weights are."""

    def forward_blocks(self, batch: dict) -> None:
        """Runs the backbone only (``model.base_model``): hooks see every block, and no LM/task head
        or vocabulary softmax is computed, nor a key/value cache kept. Encoder (examples, choices,
        tokens) inputs are flattened; a vision-language model's images go in as they are."""
        inputs = {k: batch[k].reshape(-1, batch[k].shape[-1])
                  for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        backbone = self.model.base_model
        if "use_cache" in inspect.signature(backbone.forward).parameters:
            inputs["use_cache"] = False
        backbone(**inputs, **image_inputs(batch))

    def batches(self):
        """Yields device batches of the calibration examples in the training format, examples of
        similar length together (little padding; every score here is a sum or a sample-order-free
        statistic, so the order does not change it)."""
        from tqdm.auto import tqdm

        from raylsl.objective import to_device

        device = self.device or next(self.model.parameters()).device
        ordered = sorted(self.calibration, key=self.objective.length)
        # Scoring a large model takes minutes: a bar on a terminal, nothing in logs (disable=None).
        for start in tqdm(range(0, len(ordered), self.batch_size), desc="scoring", unit="batch", leave=False,
                          disable=None):
            yield to_device(self.objective.batch(ordered[start: start + self.batch_size]), device)


@dataclass
class TrainingContext:
    """What a dynamic selector may use during training."""

    model: nn.Module
    """The peft model being trained (adapters in every block)."""
    blocks_path: str
    num_blocks: int
    objective: Any
    validation: list
    """The validation slice held out of train (probe / gate batches come from here)."""
    seed: int


class Selector(ABC):
    """Scores blocks and chooses some. Subclasses set ``name`` and ``Config`` and implement `score`."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_data: ClassVar[bool] = True
    """False for heuristics: their scores need no model forward pass and are never cached."""
    streams: ClassVar[bool] = False
    """True when the scores can be computed one block at a time (`raylsl.selectors.blockwise`)."""
    differentiates_base: ClassVar[bool] = False
    """True when scoring takes gradients of the base weights themselves (quantized ones have none)."""
    uses_budget: ClassVar[bool] = True
    """False for selectors that ignore n (all, list)."""
    reads_validation: ClassVar[str | None] = None
    """What the selector does with the validation slice, when it needs one (IST, Flexora)."""

    @classmethod
    def require_validation(cls, size: int) -> None:
        """Raises `ConfigError` when a selector that needs the validation slice gets none."""
        if cls.reads_validation and size == 0:
            raise ConfigError(f"selector={cls.name} {cls.reads_validation}; set data.val_size > 0")

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def score(self, ctx: ScoringContext | None, num_blocks: int) -> LayerScores:
        """Per-block scores; ``ctx`` is None for selectors with ``needs_data = False``."""

    def choose(self, scores: LayerScores, budget: Budget) -> list[int]:
        return choose(scores, budget)

    def cache_context(self, ctx: ScoringContext) -> dict[str, Any]:
        """What else this selector's scores depend on, for the cache key (beyond model, calibration
        data and options)."""
        return {}

    def config_key(self, config) -> dict[str, Any]:
        """The same, read off a `RunConfig` (a sweep keys its scores by it before any model loads)."""
        return {}

    def training_callback(self, ctx: TrainingContext) -> "Callback | None":
        """Selectors that choose during training (IST, LISA) return a training-loop callback."""
        return None


_REGISTRY: dict[str, type[Selector]] = {}


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: makes ``cls`` available under ``cls.name`` in YAML, the CLI and the API."""
    if cls.name in _REGISTRY:
        raise ValueError(f"selector {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    register_option_section(cls.name, cls.Config)
    return cls


def available_selectors() -> list[str]:
    """Registered selector names."""
    return sorted(_REGISTRY)


def build_selector(name: str, options: dict[str, Any] | None = None) -> Selector:
    """Instantiates a registered selector with its options (validated by its config dataclass).

    Raises:
        ConfigError: unknown name (listing the valid ones) or unknown/invalid option.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown selector '{name}'; available: {', '.join(available_selectors())}")
    cls = _REGISTRY[name]
    return cls(from_dict(cls.Config, dict(options or {}), source="the selector options", prefix=f"{name}."))
