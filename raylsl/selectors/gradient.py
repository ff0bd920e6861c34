"""Gradient norm: the baseline Act-LoRA compares against (also FIM-style selection).

``score_i = sqrt(sum over the block's LoRA target weights of ||dL/dW||_F^2)``, accumulated over the
calibration batches of the task loss, with the base model otherwise frozen. Base weights are
scored, not fresh adapters: with LoRA's B = 0 init the gradient w.r.t. A is zero.

It needs a backward pass through the whole model and a gradient as large as every target weight,
so it cannot stream one block at a time (`raylsl.selectors.streaming`); it runs under the training
engine's memory levers instead: the weights at ``model.dtype`` (bfloat16 halves weights and
gradients), and with ``train.activation_checkpointing=on`` every block keeps only its input and
recomputes its activations in backward. Quantized weights (``model.quantization``) are refused:
they have no gradient, and the full-precision gradient a quantized model would need is as large
as its unquantized weights, so quantizing saves nothing that matters here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from raylsl.lora import target_layers
from raylsl.models.checkpointing import checkpoint_blocks, uncheckpoint_blocks
from raylsl.selectors.base import LayerScores, ScoringContext, Selector, register_selector


@dataclass(frozen=True)
class GradientConfig:
    pass


@register_selector
class GradientSelector(Selector):
    name = "gradient"
    Config = GradientConfig
    differentiates_base = True

    def score(self, ctx: ScoringContext, num_blocks: int) -> LayerScores:
        weights = [[m.weight for m in target_layers(block, ctx.target_modules)] for block in ctx.blocks]
        flat = [w for ws in weights for w in ws]
        for w in flat:
            w.requires_grad_(True)
        try:
            with _recomputed(ctx.blocks, ctx.train_settings.activation_checkpointing == "on"):
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


@contextmanager
def _recomputed(blocks: nn.ModuleList, on: bool) -> Iterator[None]:
    """Every block checkpointed (`raylsl.models.checkpointing`) inside the body when ``on``. That
    wrapper recomputes blocks in training mode only, and the model scores in eval mode (no
    dropout): a pre-hook marks each block itself training as it is called (the objective may set
    eval mode between batches), while its modules, dropout among them, stay in eval."""
    if not on:
        yield
        return
    checkpoint_blocks(blocks, 0)
    handles = [block.register_forward_pre_hook(lambda module, args: setattr(module, "training", True))
               for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for block in blocks:
            block.training = False
        uncheckpoint_blocks(blocks)
