"""Activation norm (Act-LoRA, "Activation-Guided Layer Selection for LoRA").

The paper argues LoRA's weight update for a layer scales with that layer's activation magnitude
and ranks blocks by activation norms collected with probes. It has no public code; the formula
here is our reading of it:
    site=block_output (default): mean over calibration samples and real tokens of ||h_{i+1}||_2;
    site=lora_input: mean L2 norm of the inputs to the block's LoRA target modules (the quantity
    that multiplies into dL/dB).
Both are forward-only.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from raylsl.errors import ConfigError
from raylsl.lora import target_layers
from raylsl.selectors.base import LayerScores, ScoringContext, register_selector
from raylsl.selectors.blockwise import BlockStatistics, BlockwiseSelector
from raylsl.selectors.hooks import capture_block, mask_for


@dataclass(frozen=True)
class ActivationConfig:
    site: str = "block_output"
    """block_output or lora_input."""

    def __post_init__(self) -> None:
        if self.site not in ("block_output", "lora_input"):
            raise ConfigError(f"activation.site={self.site!r} must be block_output or lora_input")


@register_selector
class ActivationSelector(BlockwiseSelector):
    name = "activation"
    Config = ActivationConfig

    def statistics(self, ctx: ScoringContext, num_blocks: int) -> BlockStatistics:
        return _MeanNorms(self.config.site, ctx.target_modules, num_blocks)


class _MeanNorms(BlockStatistics):
    """Per block, the sum of the watched activations' L2 norms over real tokens, and their count."""

    def __init__(self, site: str, target_modules: tuple[str, ...], num_blocks: int):
        self.site, self.target_modules = site, target_modules
        self.totals = [[0.0, 0] for _ in range(num_blocks)]

    def add(self, index: int, x: torch.Tensor) -> None:
        mask = mask_for(x, self.mask)
        norms = x.reshape(-1, x.shape[-2], x.shape[-1]).float().norm(dim=-1)
        self.totals[index][0] += float(norms[mask].sum())
        self.totals[index][1] += int(mask.sum())

    def watch(self, index: int, block: nn.Module):
        if self.site == "block_output":
            return capture_block(index, block, lambda i, h_in, h_out: self.add(i, h_out))
        return _linear_inputs(index, block, self.target_modules, self.add)

    def result(self) -> LayerScores:
        return LayerScores(ActivationSelector.name, tuple(s / max(n, 1) for s, n in self.totals), "")


@contextmanager
def _linear_inputs(index: int, block: nn.Module, target_modules: tuple[str, ...], add) -> Iterator[None]:
    """Pre-hooks on the block's LoRA target linears; each target's input counts once per token."""
    handles = [m.register_forward_pre_hook(lambda module, args: add(index, args[0]))
               for m in target_layers(block, target_modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
