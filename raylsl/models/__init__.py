"""The model layer: which models raylsl can load, how (dtype, quantization, attention kernel),
where their blocks are, selection-aware activation checkpointing, and the memory estimate.

    registry       named models, local directories, hub names, shipped configs -> `ModelSpec`
    loading        `LoadOptions`: dtype, quantization and attention kernel, decided on the device
    blocks         `find_blocks`: the ModuleList of transformer blocks
    checkpointing  activation checkpointing from the lowest block that can train up
    memory         the estimate of what a run needs per GPU, before anything loads
"""

from raylsl.models.blocks import find_blocks, layers_pattern
from raylsl.models.registry import (DECODER, ENCODER, ModelSpec, byte_tokenizer, model_kind, resolve_model,
                                    save_to_cache, shipped_directory)

__all__ = ["DECODER", "ENCODER", "ModelSpec", "byte_tokenizer", "find_blocks", "layers_pattern", "model_kind",
           "resolve_model", "save_to_cache", "shipped_directory"]
