"""Selective LoRA: peft adapters on exactly the chosen blocks, and honest parameter counts."""

from __future__ import annotations

import re

import torch
from torch import nn

from raylsl.config import LoraSettings
from raylsl.errors import ConfigError
from raylsl.models import ENCODER, layers_pattern

# The multiple-choice head of encoder models trains with the adapters (peft modules_to_save).
ENCODER_HEAD = ("classifier",)


def parse_layers(spec: str, num_blocks: int) -> list[int]:
    """Parses ``all``, ``15-29``, ``0,3,7`` or mixes (``0-3,10``) into sorted unique indices.

    Raises:
        ConfigError: malformed spec, empty set, or an index outside ``0..num_blocks-1``.
    """
    text = str(spec).strip().lower()
    if text == "all":
        return list(range(num_blocks))
    chosen: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ConfigError(f"layers='{spec}': '{part}' is not an index or a range; use e.g. "
                              f"layers=15-29, layers=0,3,7 or layers=all")
        lo, hi = int(match[1]), int(match[2] or match[1])
        if lo > hi:
            raise ConfigError(f"layers='{spec}': range {part} is empty (write it low-high)")
        chosen.update(range(lo, hi + 1))
    if not chosen:
        raise ConfigError(f"layers='{spec}' selects no block; give at least one index, or layers=all")
    bad = sorted(i for i in chosen if i >= num_blocks)
    if bad:
        raise ConfigError(f"layers='{spec}': block {bad[0]} is out of range; this model has "
                          f"{num_blocks} blocks (0-{num_blocks - 1})")
    return sorted(chosen)


def default_target_modules(block: nn.Module) -> list[str]:
    """Leaf names of every nn.Linear inside one block (q_proj, ..., down_proj for Llama)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in block.named_modules() if isinstance(m, nn.Linear)})


def apply_lora(model: nn.Module, layers: list[int], settings: LoraSettings, blocks_path: str,
               blocks: nn.ModuleList, kind: str) -> nn.Module:
    """Wraps ``model`` in a peft LoRA model with adapters in ``layers`` only.

    The selection is expressed as peft's own ``layers_to_transform`` / ``layers_pattern``, so the
    saved adapter config reproduces it and ``PeftModel.from_pretrained`` needs nothing from raylsl.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(settings.target_modules or default_target_modules(blocks[0]))
    present = set(default_target_modules(blocks[0]))
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} not found in a block; "
                          f"linear layers there are: {', '.join(sorted(present))}")
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=targets, layers_to_transform=list(layers),
        layers_pattern=layers_pattern(blocks_path),
        modules_to_save=list(ENCODER_HEAD) if kind == ENCODER else None,
    )
    peft_model = get_peft_model(model, config)
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[name] = UniformDropout(dropout.p)
    return peft_model


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` with the keep mask drawn as ``uniform >= p``: the same distribution, drawn
    faster on CPU (``bernoulli_`` was 14% of a LoRA step there, for peft's one dropout per adapted
    module). A saved adapter does not record it; reloaded adapters get peft's own dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


def count_trainable(model: nn.Module) -> dict[str, int]:
    """Counts trainable parameters from the model itself, adapters and head apart.

    Returns:
        ``{"adapter": ..., "head": ..., "trainable": adapter + head, "total": all parameters}``.
    """
    adapter = head = total = 0
    for name, param in model.named_parameters():
        numel = getattr(param, "ds_numel", param.numel())  # a ZeRO-3 partition's full size
        total += numel
        if not param.requires_grad:
            continue
        if "lora_" in name:
            adapter += numel
        else:
            head += numel
    return {"adapter": adapter, "head": head, "trainable": adapter + head, "total": total}


def adapted_blocks(model: nn.Module, blocks_path: str) -> list[int]:
    """Indices of the blocks that hold at least one LoRA parameter (read back from the model)."""
    pattern = re.compile(rf"\.{re.escape(layers_pattern(blocks_path))}\.(\d+)\..*lora_")
    return sorted({int(m[1]) for name, _ in model.named_parameters() if (m := pattern.search(name))})
