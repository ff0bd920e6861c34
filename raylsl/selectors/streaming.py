"""Scoring a model one block at a time: peak memory is one block plus the calibration activations.

CKA and activation scores need only each block's input and output on the calibration set
(`raylsl.selectors.blockwise`), so a model larger than the scoring device (a 70B model on one
GPU, or on a CPU) can be scored without ever being whole in memory. `BlockStream` holds the
model's skeleton (parameters on the meta device, buffers real) and reads weights part by part:

1. **Capture**: the backbone's own weights outside the blocks (embeddings, final norm) and block
   0's are loaded; blocks 1..L-1 are replaced by stand-ins that pass their input through. One
   backbone pass per calibration batch then records every block's call (the attention mask, the
   rotary position embeddings, whatever the backbone hands each block: the backbone computes
   them from the inputs, not from the hidden states) and block 0's input. The backbone's own
   weights are freed.
2. **Blocks**: for i = 0..L-1, block i's weights are loaded, the calibration hidden states run
   through it with its recorded call (watched by the selector's hooks), the outputs replace the
   inputs, the block is scored and its weights freed.

Each block runs the same operations on the same tensors as in a whole-model forward, so the
scores are the same (bit for bit on one device and dtype, in the tests).

Weights come from the checkpoint's safetensors, read tensor by tensor (`raylsl.models.weights`),
or, with ``model.weights=random``, from the model's own initializer, one part at a time, each part
seeded by its index (``RANDOM_SEED + 1 + i`` for block i, ``RANDOM_SEED`` for the rest): a random
model built whole draws its weights in one sequence that cannot be replayed one block at a time, so
the random model streamed is another random model than the one built whole (and keyed apart in
the score cache).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from raylsl.models import find_blocks
from raylsl.models.loading import RANDOM_SEED, LoadOptions, from_config
from raylsl.models.weights import CheckpointWeights
from raylsl.selectors.base import ScoringContext
from raylsl.selectors.blockwise import BlockStatistics
from raylsl.selectors.hooks import hidden, token_mask


class BlockStream:
    """A model's skeleton and the source of its weights, run one block at a time (`run`)."""

    def __init__(self, model: nn.Module, blocks_path: str | None, weights: "CheckpointWeights | None",
                 device: torch.device, dtype: torch.dtype):
        """
        Args:
            model: the skeleton (`skeleton`).
            blocks_path: the block list's dotted path; None finds it.
            weights: the checkpoint's tensors; None: random weights from the model's initializer.
        """
        self.model, self.device, self.dtype, self.weights = model, device, dtype, weights
        self.blocks_path, self.blocks = find_blocks(model, blocks_path)
        base = model.base_model
        self.base_name = next(name for name, module in model.named_modules() if module is base)
        self.peak_part_bytes = 0
        """The largest part (the backbone's own weights, or one block) loaded at once, in bytes."""
        self._meta: dict[int, list[tuple[str, nn.Parameter]]] = {}
        """The skeleton's meta parameters of each loaded module, put back when it is freed."""

    def run(self, ctx: ScoringContext, stats: BlockStatistics) -> None:
        """Runs the calibration batches through every block in turn, watched by ``stats``."""
        batches = list(ctx.batches())
        masks = [token_mask(batch) for batch in batches]
        calls, states = self._capture(ctx, batches)
        for index, block in enumerate(self.blocks):
            if index:
                self._load_block(index)
            with stats.watch(index, block):
                for b, (args, kwargs) in enumerate(calls[index]):
                    stats.mask = masks[b]
                    states[b] = hidden(block(states[b], *args, **kwargs))
            stats.finish(index)
            self._free(block)

    def _capture(self, ctx: ScoringContext, batches: list[dict]) -> tuple[list[list[tuple]], list[torch.Tensor]]:
        """Every block's call per batch (its arguments after the hidden states) and block 0's
        input hidden states per batch (see the module docstring, step 1)."""
        shell = list(self._backbone_parts())
        self._load([(name, module, False) for name, module in shell], RANDOM_SEED)
        self._load_block(0)
        calls: list[list[tuple]] = [[] for _ in self.blocks]
        inputs: list[torch.Tensor] = []
        real = list(self.blocks)
        first_output: list = []

        def record(index: int):
            def pre(module, args, kwargs):
                kwargs = dict(kwargs)  # the call's own dict: the block still gets its hidden states
                state = args[0] if args else kwargs.pop("hidden_states")
                if index == 0:
                    inputs.append(state)
                calls[index].append((tuple(args[1:]), kwargs))
            return pre

        handles = [real[0].register_forward_pre_hook(record(0), with_kwargs=True),
                   real[0].register_forward_hook(lambda m, a, output: first_output.append(output))]
        for index in range(1, len(real)):
            self.blocks[index] = _PassThrough(first_output)
            handles.append(self.blocks[index].register_forward_pre_hook(record(index), with_kwargs=True))
        try:
            for batch in batches:
                ctx.forward_blocks(batch)
        finally:
            for handle in handles:
                handle.remove()
            for index in range(1, len(real)):
                self.blocks[index] = real[index]
            for _, module in shell:
                self._free(module)
        return calls, inputs

    def _backbone_parts(self) -> Iterator[tuple[str, nn.Module]]:
        """The backbone's modules that hold weights of their own, outside the blocks (prefixed names)."""
        inside = {id(m) for m in self.blocks.modules()}
        for name, module in self.model.base_model.named_modules():
            if id(module) not in inside and any(True for _ in module.parameters(recurse=False)):
                yield ".".join(p for p in (self.base_name, name) if p), module

    def _free(self, module: nn.Module) -> None:
        """Puts the skeleton's meta parameters back in ``module`` (its weights' memory is released)."""
        for name, meta in self._meta.pop(id(module)):
            _assign(module, name, meta)

    def _load_block(self, index: int) -> None:
        self._load([(f"{self.blocks_path}.{index}", self.blocks[index], True)], RANDOM_SEED + 1 + index)

    def _load(self, parts: list[tuple[str, nn.Module, bool]], seed: int) -> None:
        """Gives the parts' meta parameters real weights on the device. A part is ``(prefixed
        name, module, recurse)``: a block with everything in it, or one backbone module's own."""
        params = [(module, name, param, prefix) for prefix, module, recurse in parts
                  for name, param in module.named_parameters(recurse=recurse)]
        for _, module, recurse in parts:
            self._meta[id(module)] = list(module.named_parameters(recurse=recurse))
        if self.weights is not None:
            for module, name, _, prefix in params:
                _assign(module, name, self.weights.read(f"{prefix}.{name}", self.device, self.dtype))
        else:
            for module, name, param, _ in params:
                _assign(module, name, torch.zeros(param.shape, dtype=self.dtype, device=self.device))
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                for _, module, recurse in parts:
                    for submodule in (_post_order(module) if recurse else [module]):
                        self.model._init_weights(submodule)
        loaded = sum(param.numel() for _, _, param, _ in params) * torch.empty(0, dtype=self.dtype).element_size()
        self.peak_part_bytes = max(self.peak_part_bytes, loaded)


class _PassThrough(nn.Module):
    """A block that returns its input, in the structure the real block 0 returned."""

    def __init__(self, first_output: list):
        super().__init__()
        self.first_output = first_output

    def forward(self, *args, **kwargs):
        state = args[0] if args else kwargs["hidden_states"]
        like = self.first_output[-1]
        return (state, *([None] * (len(like) - 1))) if isinstance(like, (tuple, list)) else state


def skeleton(cls, config, options: LoadOptions, name: str) -> nn.Module:
    """``cls``'s model for ``config`` with every parameter on the meta device and real buffers
    (rotary frequencies, position ids) on ``options.device``: nothing of its weights allocated."""
    from dataclasses import replace

    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = from_config(cls, config, replace(options, quantization="none", weights="random"), name)
    model.eval()
    return model.requires_grad_(False)


def _post_order(module: nn.Module) -> Iterator[nn.Module]:
    """Submodules children first, as transformers initialises a model."""
    for child in module.children():
        yield from _post_order(child)
    yield module


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._parameters[leaf] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
