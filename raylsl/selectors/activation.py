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

from dataclasses import dataclass

import torch

from raylsl.errors import ConfigError
from raylsl.lora import target_layers
from raylsl.selectors.base import LayerScores, ScoringContext, Selector, register_selector
from raylsl.selectors.hooks import capture_blocks, mask_for, token_mask


@dataclass(frozen=True)
class ActivationConfig:
    site: str = "block_output"
    """block_output or lora_input."""

    def __post_init__(self) -> None:
        if self.site not in ("block_output", "lora_input"):
            raise ConfigError(f"activation.site={self.site!r} must be block_output or lora_input")


def _masked_norm_sum(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    norms = x.reshape(-1, x.shape[-2], x.shape[-1]).float().norm(dim=-1)
    return float(norms[mask].sum()), int(mask.sum())


@register_selector
class ActivationSelector(Selector):
    name = "activation"
    Config = ActivationConfig

    def score(self, ctx: ScoringContext, num_blocks: int) -> LayerScores:
        totals = [[0.0, 0] for _ in range(num_blocks)]
        state: dict[str, torch.Tensor] = {}

        def add(i: int, x: torch.Tensor) -> None:
            s, n = _masked_norm_sum(x, mask_for(x, state["mask"]))
            totals[i][0] += s
            totals[i][1] += n

        with torch.no_grad(), self._hooks(ctx, add):
            for batch in ctx.batches():
                state["mask"] = token_mask(batch)
                ctx.forward_blocks(batch)
        return LayerScores(self.name, tuple(s / max(n, 1) for s, n in totals), "")

    def _hooks(self, ctx: ScoringContext, add):
        if self.config.site == "block_output":
            return capture_blocks(ctx.blocks, lambda i, h_in, h_out: add(i, h_out))
        return _linear_input_hooks(ctx, add)


class _linear_input_hooks:
    """Pre-hooks on each block's LoRA target linears; each target's input counts once per token."""

    def __init__(self, ctx: ScoringContext, add):
        self.targets = [(i, m) for i, block in enumerate(ctx.blocks) for m in target_layers(block, ctx.target_modules)]
        self.add, self.handles = add, []

    def __enter__(self):
        for i, module in self.targets:
            self.handles.append(module.register_forward_pre_hook(lambda m, args, i=i: self.add(i, args[0])))

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
