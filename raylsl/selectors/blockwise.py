"""Selectors whose scores need only each block's input and output on the calibration set (CKA,
activation norms): they can score the whole model in one forward pass, or one block at a time.

Such a selector gathers `BlockStatistics` from hooks on one block at a time; where the blocks run
is not its concern. In the whole-model pass every block is watched while the backbone runs each
calibration batch; in the streamed pass (`raylsl.selectors.streaming`) block i alone is loaded,
watched while the calibration hidden states run through it, finished, and freed. Both call the
same hooks on the same tensors, so both give the same scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, ExitStack
from typing import ClassVar

import torch
from torch import nn

from raylsl.selectors.base import LayerScores, ScoringContext, Selector
from raylsl.selectors.hooks import token_mask


class BlockStatistics(ABC):
    """What a blockwise selector accumulates, block by block."""

    mask: torch.Tensor
    """The current batch's (rows, tokens) mask of real tokens, set before each forward."""

    @abstractmethod
    def watch(self, index: int, block: nn.Module) -> AbstractContextManager:
        """Hooks on block ``index`` that record what its forwards inside the ``with`` body see."""

    def finish(self, index: int) -> None:
        """Block ``index`` has seen every batch: reduce what it kept to its score (and free it)."""

    @abstractmethod
    def result(self) -> LayerScores:
        """The scores, once every block is finished."""


class BlockwiseSelector(Selector):
    """A selector whose `score` is `statistics` gathered over the calibration batches."""

    streams: ClassVar[bool] = True

    @abstractmethod
    def statistics(self, ctx: ScoringContext, num_blocks: int) -> BlockStatistics:
        """A fresh accumulator for ``num_blocks`` blocks."""

    def score(self, ctx: ScoringContext, num_blocks: int) -> LayerScores:
        stats = self.statistics(ctx, num_blocks)
        with torch.no_grad():
            if ctx.stream is not None:
                ctx.stream.run(ctx, stats)
            else:
                _whole_model(ctx, stats)
        return stats.result()


def _whole_model(ctx: ScoringContext, stats: BlockStatistics) -> None:
    with ExitStack() as stack:
        for index, block in enumerate(ctx.blocks):
            stack.enter_context(stats.watch(index, block))
        for batch in ctx.batches():
            stats.mask = token_mask(batch)
            ctx.forward_blocks(batch)
    for index in range(len(ctx.blocks)):
        stats.finish(index)
