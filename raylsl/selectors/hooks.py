"""Forward hooks on transformer blocks: each block's input and output hidden states.

``output_hidden_states`` is not used: in HF decoders its last entry is taken after the final norm,
not the raw output of the last block.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

# Receives (block index, block input, block output), each (batch, tokens, hidden).
BlockFn = Callable[[int, torch.Tensor, torch.Tensor], None]


def hidden(value) -> torch.Tensor:
    """The hidden states in a block's input or output (a tensor, or the first of a tuple)."""
    return value[0] if isinstance(value, (tuple, list)) else value


@contextmanager
def capture_block(index: int, block: nn.Module, fn: BlockFn) -> Iterator[None]:
    """Calls ``fn(index, input, output)`` on every forward of ``block`` inside the ``with`` body."""
    inputs: list[torch.Tensor] = []

    def pre(module, args, kwargs):
        inputs.append(hidden(args[0] if args else kwargs["hidden_states"]))

    def post(module, args, kwargs, output):
        fn(index, inputs.pop(), hidden(output))

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True),
               block.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_blocks(blocks: nn.ModuleList, fn: BlockFn) -> Iterator[None]:
    """Calls ``fn`` for every block on every forward pass inside the ``with`` body."""
    with ExitStack() as stack:
        for index, block in enumerate(blocks):
            stack.enter_context(capture_block(index, block, fn))
        yield


def token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(rows, tokens) mask of real tokens, with encoder (examples, choices, tokens) flattened."""
    mask = batch["attention_mask"]
    return mask.reshape(-1, mask.shape[-1]).bool()


def mask_for(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (`token_mask`) where ``hidden`` is over the batch's tokens; every position where it
    is over something else (a vision-language model's vision-tower blocks: image patches)."""
    rows = hidden.reshape(-1, *hidden.shape[-2:]).shape[:2]
    return mask if mask.shape == rows else torch.ones(rows, dtype=torch.bool, device=hidden.device)
