"""Activation checkpointing that knows the selection.

Blocks below the lowest block that can train (the lowest adapted block; for IST/LISA, the lowest
block that can be active) need no backward at all: nothing in them or below them requires grad,
so autograd records nothing there and keeps none of their activations. Checkpointing them would
be pure waste, and the usual recipe (transformers' ``gradient_checkpointing_enable`` plus
``enable_input_require_grads``, which peft and transformers call when checkpointing is on) makes
the embeddings' output require grad, which forces a backward through every block.

`checkpoint_blocks` wraps only the blocks from ``lowest`` up: each one's forward runs under
``torch.utils.checkpoint`` (non-reentrant, which needs no input to require grad and restores the
RNG state, so dropout masks recompute identically), keeping its input instead of its
activations, and recomputing them in backward. Nothing else changes: hooks on a block fire once
per forward (the recomputation calls its plain forward, so hooks on the modules inside it fire
again, hooks on the block itself do not), and evaluation (no grad) runs the plain forward.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_ORIGINAL = "_raylsl_plain_forward"


def checkpoint_blocks(blocks: nn.ModuleList, lowest: int) -> list[int]:
    """Checkpoints ``blocks[lowest:]``; returns their indices.

    Args:
        blocks: the model's block list (`raylsl.models.find_blocks`).
        lowest: the lowest block that can train; blocks below it are left alone.
    """
    wrapped = []
    for index in range(lowest, len(blocks)):
        block = blocks[index]
        if not hasattr(block, _ORIGINAL):
            setattr(block, _ORIGINAL, block.forward)
            block.forward = functools.partial(_checkpointed, block)
        wrapped.append(index)
    return wrapped


def uncheckpoint_blocks(blocks: nn.ModuleList) -> None:
    """Puts every block's plain forward back."""
    for block in blocks:
        if hasattr(block, _ORIGINAL):
            block.forward = getattr(block, _ORIGINAL)
            delattr(block, _ORIGINAL)


def checkpointed_blocks(blocks: nn.ModuleList) -> list[int]:
    """Indices of the blocks `checkpoint_blocks` wrapped."""
    return [i for i, block in enumerate(blocks) if hasattr(block, _ORIGINAL)]


def _checkpointed(block: nn.Module, *args, **kwargs):
    forward = getattr(block, _ORIGINAL)
    if not (block.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
