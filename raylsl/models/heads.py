"""A model's output head as training sees it: run only where the loss is, or in chunks.

``head_only_at`` hands the head the hidden states of selected positions only, so the vocabulary
projection runs on the rows the loss reads. ``hidden_at`` + ``chunked_nll`` go further for long
targets: the head runs on no rows inside the model's forward, and the caller applies it to the
captured hidden states in chunks, each under non-reentrant checkpointing, so at most one chunk's
logits (chunk x vocabulary) exist at a time, in forward and in backward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / DeepSpeed wrappers (their forward must still be the one called)."""
    while type(model).__name__ in ("DistributedDataParallel", "DeepSpeedEngine"):
        model = model.module
    return model


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embeddings (the LM head), or None when it exposes none."""
    get = getattr(unwrap(model), "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else None


@contextmanager
def head_only_at(model: nn.Module, select: torch.Tensor) -> Iterator[None]:
    """Inside the body, the output head sees only the hidden states where ``select`` (a bool mask
    over the forward's (rows, positions)) is True; ``logits`` come out as (selected, vocab)."""
    head = output_head(model)
    if head is None:
        raise RuntimeError("the model exposes no output embeddings")
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][select], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def hidden_at(model: nn.Module, select) -> Iterator[list[torch.Tensor]]:
    """Inside the body, the output head's input at ``select`` is captured (the yielded list gets it)
    and the head itself runs on no rows: the caller applies it in chunks (`chunked_nll`).

    Args:
        select: a bool mask over the forward's (rows, positions), or a function from the head's
            input to the rows wanted (shape-only selection, which also works on the meta device).
    """
    head = output_head(model)
    if head is None:
        raise RuntimeError("the model exposes no output embeddings")
    captured: list[torch.Tensor] = []

    def take(module, args):
        captured.append(select(args[0]) if callable(select) else args[0][select])
        return (captured[-1][:0], *args[1:])

    handle = head.register_forward_pre_hook(take)
    try:
        yield captured
    finally:
        handle.remove()


def chunked_nll(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-position NLL of ``labels`` under the output head applied to ``hidden`` in chunks of
    ``chunk`` rows; with gradients on, each chunk runs under non-reentrant checkpointing, so only
    one chunk's logits exist at a time in forward and in backward."""
    head = output_head(model)
    parts = []
    for start in range(0, labels.shape[0], chunk):
        rows, targets = hidden[start:start + chunk], labels[start:start + chunk]
        if torch.is_grad_enabled() and rows.requires_grad:
            parts.append(checkpoint(_head_nll, head, rows, targets, use_reentrant=False))
        else:
            parts.append(_head_nll(head, rows, targets))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _head_nll(head: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(rows).float(), targets, reduction="none")
