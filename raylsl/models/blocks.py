"""Finding a model's transformer blocks: the ModuleList selection, LoRA and checkpointing act on."""

from __future__ import annotations

from torch import nn

from raylsl.errors import ModelError
from raylsl.models.architectures import architecture, unsupported


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Finds the ModuleList of transformer blocks.

    A family in `raylsl.models.architectures` has its path there. Otherwise discovery takes the
    ModuleLists whose entries all share one class, prefers those with as many entries as the
    config has hidden layers (in transformers 4, a MoE block's list of experts can outnumber the
    blocks), and of those the largest (Llama, Qwen, Mistral, Gemma ``model.layers``; GPT-2
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
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
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


def layers_pattern(blocks_path: str) -> str:
    """The attribute name peft matches in ``<pattern>.<index>.`` (``model.layers`` -> ``layers``)."""
    return blocks_path.rsplit(".", 1)[-1]
