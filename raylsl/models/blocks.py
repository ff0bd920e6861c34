"""Finding a model's transformer blocks: the ModuleList selection, LoRA and checkpointing act on."""

from __future__ import annotations

import re

from torch import nn

from raylsl.errors import ModelError
from raylsl.models.architectures import architecture, unsupported


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Finds the ModuleList of transformer blocks.

    A family in `raylsl.models.architectures` has its path there. Otherwise discovery takes the
    ModuleLists whose entries all share one class, prefers those with as many entries as the
    config (or a vision-language model's text config) has hidden layers (in transformers 4, a MoE
    block's list of experts can outnumber the blocks; a vision tower's can outnumber a small
    language model's), and of those the largest (Llama, Qwen, Mistral, Gemma ``model.layers``; GPT-2
    ``transformer.h``; BERT ``encoder.layer``...).

    Args:
        model: the model (a peft wrapper works too).
        path: dotted path of the block list, overriding both (``model.layers``).

    Returns:
        ``(dotted_path, blocks)``.

    Raises:
        ModelError: the path does not name a ModuleList, or no candidate list exists.
    """
    if path:
        blocks = _module_list(model, path)
        if blocks is None:
            raise ModelError(f"blocks_path '{path}' does not name a non-empty nn.ModuleList in "
                             f"{type(model).__name__}; check the module names with print(model)")
        return path, blocks
    known = architecture(getattr(getattr(model, "config", None), "model_type", None))
    if known is not None and (blocks := _module_list(model, known.blocks_path)) is not None:
        return known.blocks_path, blocks
    config = getattr(model, "config", None)
    depth = getattr(config, "num_hidden_layers", None) or getattr(getattr(config, "text_config", None),
                                                                   "num_hidden_layers", None)
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1]
    if not candidates:
        raise unsupported(model, "no nn.ModuleList of identical blocks in it")
    return max(candidates, key=lambda found: (len(found[1]) == depth, len(found[1])))


def _module_list(model: nn.Module, path: str) -> nn.ModuleList | None:
    try:
        blocks = model.get_submodule(path)
    except AttributeError:
        return None
    return blocks if isinstance(blocks, nn.ModuleList) and len(blocks) > 0 else None


def layers_pattern(blocks_path: str, model: nn.Module | None = None) -> str:
    """What peft matches in ``<pattern>.<index>.``: the block list's own name (``model.layers`` ->
    ``layers``), qualified by its parents as far as it takes for no other ModuleList of ``model``
    to end in it (a vision-language model's ``model.language_model.layers`` ->
    ``language_model.layers``, since its vision tower's list is ``encoder.layers``)."""
    parts = blocks_path.split(".")
    others = [name for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and name != blocks_path] if model is not None else []
    for size in range(1, len(parts)):
        pattern = ".".join(parts[-size:])
        if not any(name == pattern or name.endswith("." + pattern) for name in others):
            return pattern
    return blocks_path


def block_index(blocks_path: str) -> re.Pattern:
    """Matches a parameter or module name inside block N of ``blocks_path`` (group 1: N), under
    any wrapper's prefix (peft's ``base_model.model.``, DDP's ``module.``) and no other list."""
    return re.compile(rf"(?:^|\.){re.escape(blocks_path)}\.(\d+)\.")
