"""Finding a model's transformer blocks: the ModuleList selection, LoRA and checkpointing act on."""

from __future__ import annotations

from torch import nn

from raylsl.errors import ModelError


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Finds the ModuleList of transformer blocks.

    Discovery takes the largest ``nn.ModuleList`` whose entries all share one class (Llama, Qwen,
    Mistral, Gemma ``model.layers``; GPT-2 ``transformer.h``; BERT ``encoder.layer``...).

    Args:
        model: the model (a peft wrapper works too).
        path: dotted path of the block list, overriding discovery (``model.layers``).

    Returns:
        ``(dotted_path, blocks)``.

    Raises:
        ModelError: the path does not name a ModuleList, or no candidate list exists.
    """
    if path:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            blocks = None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ModelError(f"blocks_path '{path}' does not name a non-empty nn.ModuleList in "
                             f"{type(model).__name__}; check the module names with print(model)")
        return path, blocks
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__}: no "
                         f"nn.ModuleList of identical blocks. Set blocks_path=<dotted.path> "
                         f"(e.g. blocks_path=model.layers).")
    return best


def layers_pattern(blocks_path: str) -> str:
    """The attribute name peft matches in ``<pattern>.<index>.`` (``model.layers`` -> ``layers``)."""
    return blocks_path.rsplit(".", 1)[-1]
