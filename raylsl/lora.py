"""Selective LoRA: peft adapters on exactly the chosen blocks, and honest parameter counts."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from raylsl.config import LoraSettings
from raylsl.errors import ConfigError, RaylslWarning
from raylsl.models import ENCODER, architecture, block_index, describe, layers_pattern, unsupported

# The multiple-choice head of encoder models trains with the adapters (peft modules_to_save).
ENCODER_HEAD = ("classifier",)
LINEAR_LAYERS = (nn.Linear, Conv1D)
"""What LoRA targets by name: nn.Linear (and subclasses: Falcon's, bitsandbytes' 4/8-bit) and
GPT-2's Conv1D (its weight stored input-major; peft's fan_in_fan_out)."""
UNADAPTED_WARNING = 0.1
"""Share of the adapted blocks' weights left without LoRA above which `warn_unadapted` warns."""


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


def default_target_modules(blocks: nn.ModuleList, model_type: str | None = None) -> list[str]:
    """Leaf names of every linear layer inside the blocks (nn.Linear or GPT-2's Conv1D; q_proj, ...,
    down_proj for Llama, qkv_proj and gate_up_proj for Phi-3, c_attn, c_fc, c_proj for GPT-2), less
    the router gates of ``model_type`` (`raylsl.models.architectures`)."""
    routers = set(known.routers) if (known := architecture(model_type)) else set()
    return sorted(set(linear_layers(blocks)) - routers)


def linear_layers(blocks: nn.ModuleList | nn.Module) -> dict[str, list[nn.Module]]:
    """The linear layers peft can adapt by name inside ``blocks``, by leaf name."""
    found: dict[str, list[nn.Module]] = {}
    for name, module in blocks.named_modules():
        if isinstance(module, LINEAR_LAYERS):
            found.setdefault(name.rsplit(".", 1)[-1], []).append(module)
    return found


def target_layers(block: nn.Module, targets: tuple[str, ...] | list[str]) -> list[nn.Module]:
    """The layers of one block that LoRA adapts under ``targets`` (what selectors score)."""
    return [m for name, modules in linear_layers(block).items() if name in targets for m in modules]


def lora_targets(model: nn.Module, blocks: nn.ModuleList, settings: LoraSettings) -> list[str]:
    """The target leaf names for ``model``: ``lora.target_modules``, checked against what the
    blocks hold, or `default_target_modules`.

    Raises:
        ConfigError: a configured target is not a linear layer of the blocks.
        ModelError: the blocks hold no linear layer to adapt (naming the ways out).
    """
    present = default_target_modules(blocks)
    if not present:
        raise unsupported(model, f"its blocks ({type(blocks[0]).__name__}) hold no nn.Linear or Conv1D layer to "
                                 f"put LoRA on")
    if not settings.target_modules:
        return default_target_modules(blocks, _model_type(model))
    missing = [t for t in settings.target_modules if t not in present]
    if missing:
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} not found in a block; "
                          f"linear layers there are: {', '.join(present)}")
    return sorted(settings.target_modules)


def apply_lora(model: nn.Module, layers: list[int], settings: LoraSettings, blocks_path: str,
               blocks: nn.ModuleList, kind: str) -> nn.Module:
    """Wraps ``model`` in a peft LoRA model with adapters in ``layers`` only.

    The selection is expressed as peft's own ``layers_to_transform`` / ``layers_pattern``, so the
    saved adapter config reproduces it and ``PeftModel.from_pretrained`` needs nothing from raylsl.
    Fused expert weights (``lora.target_parameters``) are named block by block: peft applies no
    layer filter to parameters. A vision-language model's vision tower holds layers of the same
    names in a list of the same name: `layers_pattern` qualifies the pattern so it does not match.

    Raises:
        ConfigError: a configured target is not in the blocks.
        ModelError: nothing to adapt, or peft put adapters elsewhere than on ``layers``.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, blocks, settings)
    found = linear_layers(blocks)
    layer_types = {type(m) is Conv1D for name in targets for m in found[name]}
    if len(layer_types) > 1:
        raise unsupported(model, f"its targets {', '.join(targets)} mix nn.Linear and Conv1D layers, whose weights "
                                 f"peft reads in opposite layouts")
    experts = _expert_parameters(model, blocks, settings.target_parameters or (), blocks_path, layers)
    warn_unadapted(model, [blocks[i] for i in layers], targets, settings.target_parameters or ())
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=targets, layers_to_transform=list(layers),
        layers_pattern=layers_pattern(blocks_path, model), target_parameters=experts or None,
        fan_in_fan_out=layer_types == {True},
        modules_to_save=list(ENCODER_HEAD) if kind == ENCODER else None,
    )
    peft_model = get_peft_model(model, config)
    # peft holds the targets as sets and writes them in hash order: as lists, a run saves the same config.
    peft_model.peft_config["default"].target_modules = targets
    if experts:
        peft_model.peft_config["default"].target_parameters = experts
    adapted = adapted_blocks(peft_model, blocks_path)
    inside = block_index(blocks_path)
    elsewhere = sorted({name.split(".lora_")[0] for name, _ in peft_model.named_parameters()
                        if "lora_" in name and not inside.search(name)})
    if adapted != sorted(layers) or elsewhere:
        found = f"blocks {adapted} of {blocks_path}" + (f" and {', '.join(elsewhere)}" if elsewhere else "")
        raise unsupported(model, f"peft adapted {found} instead of blocks {sorted(layers)}")
    for module in peft_model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if type(dropout) is nn.Dropout:
                    dropouts[name] = UniformDropout(dropout.p)
    return peft_model


def loose_weights(block: nn.Module, model_type: str | None = None) -> dict[str, nn.Parameter]:
    """Weight matrices of one block that no linear layer holds, so ``lora.target_modules`` cannot
    reach them (MoE experts fused into 3-D parameters), less the family's router gates; by
    block-relative name."""
    routers = set(known.routers) if (known := architecture(model_type)) else set()
    held = {id(p) for modules in linear_layers(block).values() for m in modules for p in m.parameters()}
    held |= {id(p) for name, m in block.named_modules() if name.rsplit(".", 1)[-1] in routers for p in m.parameters()}
    return {name: p for name, p in block.named_parameters() if len(_shape(p)) >= 2 and id(p) not in held}


def _shape(param: nn.Parameter) -> torch.Size:
    """A parameter's full shape, also when ZeRO-3 holds only a partition of it here."""
    return getattr(param, "ds_shape", param.shape)


def _expert_parameters(model: nn.Module, blocks: nn.ModuleList, names: tuple[str, ...], blocks_path: str,
                       layers: list[int]) -> list[str]:
    """``lora.target_parameters`` as peft's full names in the chosen blocks.

    Raises:
        ConfigError: a name that is not a loose weight of the blocks (`loose_weights`).
    """
    loose = sorted(loose_weights(blocks[0], _model_type(model)))
    missing = [name for name in names if name not in loose]
    if missing:
        raise ConfigError(f"lora.target_parameters: {', '.join(missing)} is not a weight outside the linear layers of a "
                          f"block; those are: {', '.join(loose) or 'none (use lora.target_modules)'}")
    return [f"{blocks_path}.{i}.{name}" for i in layers for name in sorted(names)]


def warn_unadapted(model: nn.Module, blocks: list[nn.Module], targets: list[str], parameters: tuple[str, ...]) -> None:
    """Warns, naming them, when `loose_weights` left without LoRA are more than a tenth of the
    adapted blocks' weights (a MoE model's routed experts by default)."""
    left: dict[str, int] = {}
    for block in blocks:
        for name, param in loose_weights(block, _model_type(model)).items():
            if name not in parameters:
                left[name] = left.get(name, 0) + _shape(param).numel()
    share = sum(left.values()) / max(sum(_shape(p).numel() for block in blocks for p in block.parameters()), 1)
    if share > UNADAPTED_WARNING:
        names = ",".join(sorted(left))
        warnings.warn(f"raylsl: {describe(model)}: {names.replace(',', ', ')} ({share:.0%} of the adapted blocks' "
                      f"weights) get no LoRA (targets: {', '.join(targets)}); to adapt them too, set "
                      f"lora.target_parameters=[{names}] lora.dropout=0", RaylslWarning)


def _model_type(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


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
    pattern = block_index(blocks_path)
    return sorted({int(m[1]) for name, _ in model.named_parameters()
                   if "lora_" in name and (m := pattern.search(name))})
