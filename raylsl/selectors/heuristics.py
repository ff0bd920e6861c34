"""Heuristic selectors: no model pass, no cache.

``all`` (vanilla LoRA, the reference of every comparison), ``first`` N, ``last`` N, ``random`` N
(seeded), ``contiguous`` (a window of N blocks from ``start``, centred by default) and ``list``
(explicit indices).
"""

from __future__ import annotations

import random
from abc import abstractmethod
from dataclasses import dataclass

from raylsl.errors import ConfigError
from raylsl.selectors.base import Budget, LayerScores, Selector, register_selector


class _Heuristic(Selector):
    needs_data = False

    def score(self, ctx, num_blocks: int) -> LayerScores:
        return LayerScores(self.name, tuple(float(s) for s in self.position_scores(num_blocks)), "")

    @abstractmethod
    def position_scores(self, num_blocks: int) -> list[float]:
        """The ranking, from block positions alone."""


@dataclass(frozen=True)
class NoOptions:
    pass


@register_selector
class AllSelector(_Heuristic):
    """Every block (vanilla LoRA); ignores the budget."""

    name, Config, uses_budget = "all", NoOptions, False

    def position_scores(self, num_blocks):
        return [1.0] * num_blocks

    def choose(self, scores, budget):
        return list(range(len(scores.scores)))


@register_selector
class FirstSelector(_Heuristic):
    name, Config = "first", NoOptions

    def position_scores(self, num_blocks):
        return [num_blocks - i for i in range(num_blocks)]


@register_selector
class LastSelector(_Heuristic):
    name, Config = "last", NoOptions

    def position_scores(self, num_blocks):
        return [i + 1 for i in range(num_blocks)]


@dataclass(frozen=True)
class RandomConfig:
    seed: int = 0
    """Seed of the random ranking."""


@register_selector
class RandomSelector(_Heuristic):
    name, Config = "random", RandomConfig

    def position_scores(self, num_blocks):
        rng = random.Random(self.config.seed)
        return [rng.random() for _ in range(num_blocks)]


@dataclass(frozen=True)
class ContiguousConfig:
    start: int | None = None
    """First block of the window; None centres the window in the model."""


@register_selector
class ContiguousSelector(_Heuristic):
    name, Config = "contiguous", ContiguousConfig

    def position_scores(self, num_blocks):
        return [-abs(i - (num_blocks - 1) / 2) for i in range(num_blocks)]

    def choose(self, scores: LayerScores, budget: Budget) -> list[int]:
        num = len(scores.scores)
        if budget.n is None:
            raise ConfigError("selector=contiguous needs a block count or fraction n=")
        k = budget.count(num)
        start = (num - k) // 2 if self.config.start is None else self.config.start
        if not 0 <= start <= num - k:
            raise ConfigError(f"contiguous.start={start} with n={k} runs past the model's {num} blocks; "
                              f"use start <= {num - k}")
        return list(range(start, start + k))


@dataclass(frozen=True)
class ListConfig:
    layers: str = ""
    """Explicit blocks: 15-29, 0,3,7 (same syntax as layers=)."""


@register_selector
class ListSelector(_Heuristic):
    """The blocks named in ``list.layers``; ignores the budget."""

    name, Config, uses_budget = "list", ListConfig, False

    def position_scores(self, num_blocks):
        chosen = set(self._parse(num_blocks))
        return [1.0 if i in chosen else 0.0 for i in range(num_blocks)]

    def choose(self, scores, budget):
        return self._parse(len(scores.scores))

    def _parse(self, num_blocks):
        from raylsl.lora import parse_layers

        if not self.config.layers:
            raise ConfigError("selector=list needs list.layers=... (e.g. list.layers=15-29)")
        return parse_layers(self.config.layers, num_blocks)
