"""Per-block handles on a peft LoRA model: each block's adapter parameters, and scaling of each
block's LoRA branch output (IST's response suppression, Flexora's gates).

Scaling is a forward hook on the ``lora_B`` linear of every adapted module in the block, so the
branch ``B(A(dropout(x))) * scaling`` is multiplied by the factor exactly once, whatever peft's
version does with its ``scaling`` dict, and the hooks are always removed on exit, also when the
forward pass raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from raylsl.errors import ConfigError
from raylsl.models import block_index


def lora_modules_by_block(model: nn.Module, blocks_path: str) -> dict[int, list[nn.Module]]:
    """The peft LoRA layers (modules with ``lora_B``) of each adapted block, by block index."""
    pattern = block_index(blocks_path)
    found: dict[int, list[nn.Module]] = {}
    for name, module in model.named_modules():
        match = pattern.search(name)
        if match and isinstance(getattr(module, "lora_B", None), nn.ModuleDict):
            found.setdefault(int(match[1]), []).append(module)
    return found


def lora_params_by_block(model: nn.Module, blocks_path: str) -> dict[int, list[nn.Parameter]]:
    """Trainable LoRA parameters of each adapted block."""
    return {i: [p for m in modules for name, p in m.named_parameters() if "lora_" in name and p.requires_grad]
            for i, modules in lora_modules_by_block(model, blocks_path).items()}


def require_lora_outputs(model: nn.Module, who: str) -> None:
    """Raises `ConfigError` when some LoRA has no output to scale: peft folds LoRA on fused expert
    weights (``lora.target_parameters``) into the weight itself, so `scaled_lora` cannot reach it."""
    from peft.tuners.lora import ParamWrapper

    if any(isinstance(module, ParamWrapper) for module in model.modules()):
        raise ConfigError(f"selector={who} scales each block's LoRA output, and LoRA on fused expert weights "
                          f"(lora.target_parameters) has none: drop lora.target_parameters or choose another selector")


@contextmanager
def scaled_lora(model: nn.Module, blocks_path: str,
                factors: Mapping[int, float | torch.Tensor]) -> Iterator[None]:
    """Multiplies block i's LoRA branch output by ``factors[i]`` inside the ``with`` body.

    Factors may be tensors that require grad (Flexora's gates): gradients flow into them.
    """
    modules = lora_modules_by_block(model, blocks_path)
    handles = []
    try:
        for index, factor in factors.items():
            for module in modules.get(index, []):
                for lora_b in module.lora_B.values():
                    handles.append(lora_b.register_forward_hook(lambda m, args, out, f=factor: out * f))
        yield
    finally:
        for handle in handles:
            handle.remove()
