"""The optimizer and learning-rate schedule every training path uses (and Flexora's search)."""

from __future__ import annotations

import math

import torch
from torch import nn

from raylsl.config import TrainSettings


def build_optimizer(model: nn.Module, settings: TrainSettings, groups: list[dict] | None = None):
    """AdamW over trainable parameters with linear warmup then cosine decay to 0.

    ``groups`` (optional) splits the trainable parameters into param groups; a dynamic selector
    asks for one per block so that a block can be held still under ZeRO (see `raylsl.selectors.dynamic`).
    """
    params = groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        span = max(settings.steps - settings.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - settings.warmup_steps, span) / span))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
