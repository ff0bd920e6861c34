"""The model layer: which models raylsl can load, how (dtype, quantization, attention kernel),
where their blocks are, selection-aware activation checkpointing, and the memory estimate.

    registry       named models, local directories, storage URIs, hub names, shipped configs -> `ModelSpec`
    architectures  the families raylsl is tested on: kind, blocks path, LoRA targets, MoE experts
    loading        `LoadOptions`: dtype, quantization and attention kernel, decided on the device
    blocks         `find_blocks`: the ModuleList of transformer blocks
    vision         vision-language models: their image inputs, and tiny ones built from a config
    checkpointing  activation checkpointing from the lowest block that can train up
    memory         the estimate of what a run needs per GPU, before anything loads
    weights        a checkpoint's tensors read one at a time (scoring block by block), its fingerprint
"""

from raylsl.models.architectures import (ARCHITECTURES, DECODER, ENCODER, VLM, Architecture, architecture, describe,
                                         model_kind, unsupported)
from raylsl.models.blocks import block_index, find_blocks, layers_pattern
from raylsl.models.registry import ModelSpec, byte_tokenizer, resolve_model, save_to_cache, shipped_directory

__all__ = ["ARCHITECTURES", "Architecture", "DECODER", "ENCODER", "VLM", "ModelSpec", "architecture", "block_index",
           "byte_tokenizer", "describe",
           "find_blocks", "layers_pattern", "model_kind", "resolve_model", "save_to_cache", "shipped_directory",
           "unsupported"]
