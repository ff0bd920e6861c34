"""Gradient norm: the baseline Act-LoRA compares against (also FIM-style selection).

``score_i = sqrt(sum over the block's LoRA target weights of ||dL/dW||_F^2)``, accumulated over the
calibration batches of the task loss, with the base model otherwise frozen. Base weights are
scored, not fresh adapters: with LoRA's B = 0 init the gradient w.r.t. A is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raylsl.lora import target_layers
from raylsl.selectors.base import LayerScores, ScoringContext, Selector, register_selector


@dataclass(frozen=True)
class GradientConfig:
    pass


@register_selector
class GradientSelector(Selector):
    name = "gradient"
    Config = GradientConfig

    def score(self, ctx: ScoringContext, num_blocks: int) -> LayerScores:
        weights = [[m.weight for m in target_layers(block, ctx.target_modules)] for block in ctx.blocks]
        flat = [w for ws in weights for w in ws]
        for w in flat:
            w.requires_grad_(True)
        try:
            for batch in ctx.batches():
                ctx.objective.loss(ctx.model, batch).backward()
            # A block the loss does not read (a vision tower's past its feature layer) has no gradient: 0.
            zero = torch.zeros((), dtype=torch.float64)
            scores = tuple(float(torch.sqrt(sum((w.grad.double().square().sum() for w in ws if w.grad is not None),
                                                zero))) for ws in weights)
        finally:
            for w in flat:
                w.grad = None
                w.requires_grad_(False)
        return LayerScores(self.name, scores, "")
