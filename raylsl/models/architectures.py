"""What raylsl knows about each model family it is tested on: one table, like peft's target-module
mapping, that the runtime reads and the architecture test matrix (``tests/models/``) iterates.

A family is a transformers ``model_type``. For each: its kind (decoder: causal LM; encoder:
multiple-choice head; vlm: a vision-language model, an image-text-to-text class), the dotted
path of its block list in the class raylsl loads, the LoRA targets raylsl picks by default (every
``nn.Linear`` or GPT-2 ``Conv1D`` inside a block, fused projections such as Phi-3's ``qkv_proj``
included, router gates excluded), and, for mixtures of experts, the fused expert parameters.

MoE models: the routed experts are 3-D parameters in transformers 5, not linear layers. By default
raylsl adapts attention and any dense MLP (Qwen2-MoE's shared expert), not the routed experts, and
warns naming them: peft's LoRA on a raw parameter (``target_parameters``) has no dropout, IST's and
Flexora's per-block gates cannot reach it, and TGI, LoRAX and llama.cpp serve no expert adapters,
so the default adapter is one every server takes. ``lora.target_parameters`` (with
``lora.dropout=0``) adapts them too. Router gates are never targets: they choose experts, and the
peft and serving paths treat them as plain weights.

Vision-language models (LLaVA, Idefics3): the blocks are the language model's decoder blocks; the
vision tower's blocks are a separate set (``vision_blocks_path``, which ``blocks_path`` may name);
the vision tower and the projector (``vision_modules``) hold no adapter and stay frozen.

Families not in the table still run: blocks are discovered, targets are every linear layer in a
block, and the kind follows transformers' own auto classes (`model_kind`).
"""

from __future__ import annotations

from dataclasses import dataclass

from raylsl.errors import ModelError

DECODER, ENCODER, VLM = "decoder", "encoder", "vlm"


@dataclass(frozen=True)
class Architecture:
    """One model family's facts (see the module docstring)."""

    name: str
    """What users call it (Llama, GPT-2, ModernBERT)."""
    model_type: str
    """transformers' ``config.model_type``."""
    kind: str
    """decoder (causal LM), encoder (multiple-choice head) or vlm (image-text-to-text)."""
    blocks_path: str
    """Dotted path of the block ModuleList in the class raylsl loads."""
    targets: tuple[str, ...]
    """Default LoRA targets: leaf names of the block's linear layers, sorted."""
    fused: tuple[str, ...] = ()
    """Targets that are fused projections (one LoRA over q, k and v, or over gate and up)."""
    conv1d: bool = False
    """Targets are GPT-2 ``Conv1D`` layers (weights stored input-major: peft's fan_in_fan_out)."""
    experts: tuple[str, ...] = ()
    """Block-relative names of the fused expert parameters (MoE), not adapted by default."""
    routers: tuple[str, ...] = ()
    """Leaf names of the router gates inside a block (linear or not): never targets, and not
    counted as weights left unadapted."""
    vision_blocks_path: str | None = None
    """A vision-language model's vision-tower block list (``blocks_path`` may name it instead)."""
    vision_modules: tuple[str, ...] = ()
    """A vision-language model's vision tower and projector: frozen, no adapter by default."""

    @property
    def heads(self) -> tuple[str, ...]:
        """The objectives raylsl trains this family with."""
        if self.kind == ENCODER:
            return ("multiple choice",)
        if self.kind == VLM:
            return ("image+text: multiple choice", "image+text: generative")
        return ("causal LM: multiple choice", "causal LM: generative")


_LLAMA_TARGETS = ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj")
_EXPERTS = ("mlp.experts.down_proj", "mlp.experts.gate_up_proj")
_BERT_TARGETS = ("dense", "key", "query", "value")

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("Llama", "llama", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Mistral", "mistral", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Qwen2", "qwen2", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Qwen3", "qwen3", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Gemma2", "gemma2", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Gemma3 (text)", "gemma3_text", DECODER, "model.layers", _LLAMA_TARGETS),
    Architecture("Phi-3", "phi3", DECODER, "model.layers", ("down_proj", "gate_up_proj", "o_proj", "qkv_proj"),
                 fused=("gate_up_proj", "qkv_proj")),
    Architecture("GPT-NeoX", "gpt_neox", DECODER, "gpt_neox.layers",
                 ("dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"), fused=("query_key_value",)),
    Architecture("GPT-2", "gpt2", DECODER, "transformer.h", ("c_attn", "c_fc", "c_proj"), fused=("c_attn",),
                 conv1d=True),
    Architecture("Falcon", "falcon", DECODER, "transformer.h",
                 ("dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"), fused=("query_key_value",)),
    Architecture("OPT", "opt", DECODER, "model.decoder.layers", ("fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj")),
    Architecture("Mixtral (MoE)", "mixtral", DECODER, "model.layers", ("k_proj", "o_proj", "q_proj", "v_proj"),
                 experts=_EXPERTS, routers=("gate",)),
    Architecture("Qwen2-MoE", "qwen2_moe", DECODER, "model.layers", _LLAMA_TARGETS, experts=_EXPERTS,
                 routers=("gate", "shared_expert_gate")),
    Architecture("BERT", "bert", ENCODER, "bert.encoder.layer", _BERT_TARGETS),
    Architecture("RoBERTa", "roberta", ENCODER, "roberta.encoder.layer", _BERT_TARGETS),
    Architecture("DeBERTa-v2", "deberta-v2", ENCODER, "deberta.encoder.layer",
                 ("dense", "key_proj", "query_proj", "value_proj")),
    Architecture("ModernBERT", "modernbert", ENCODER, "model.layers", ("Wi", "Wo", "Wqkv"), fused=("Wi", "Wqkv")),
    Architecture("LLaVA", "llava", VLM, "model.language_model.layers", _LLAMA_TARGETS,
                 vision_blocks_path="model.vision_tower.encoder.layers",
                 vision_modules=("model.multi_modal_projector", "model.vision_tower")),
    Architecture("Idefics3", "idefics3", VLM, "model.text_model.layers", _LLAMA_TARGETS,
                 vision_blocks_path="model.vision_model.encoder.layers",
                 vision_modules=("model.connector", "model.vision_model")),
)
"""Every family the architecture matrix tests; `docs/architectures.md` is generated from it."""

_BY_TYPE = {arch.model_type: arch for arch in ARCHITECTURES}

WAYS_OUT = ("set model.kind=decoder|encoder|vlm (causal LM, multiple-choice head or image-text-to-text), "
            "blocks_path=<dotted path of the block ModuleList>, or lora.target_modules=[<leaf names of the layers to "
            "adapt>]; the tested families are listed in docs/architectures.md")
"""The keys that tell raylsl what it could not find out about a model."""


def architecture(model_type: str | None) -> Architecture | None:
    """The table's entry for ``model_type``, or None for a family raylsl has not been tested on."""
    return _BY_TYPE.get(model_type or "")


def describe(model_or_config) -> str:
    """``'t5' (T5Config)``: how an error names a model's architecture."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        return type(model_or_config).__name__
    return f"'{model_type}' ({type(config).__name__})"


def model_kind(config) -> str:
    """encoder when transformers has a multiple-choice class for the config's family (BERT,
    RoBERTa, DeBERTa, ModernBERT...), decoder when it has a causal-LM class, vlm when it has an
    image-text-to-text class only (LLaVA, Idefics3, Qwen2-VL...).

    Raises:
        ModelError: transformers has none of them, naming the architecture and the ways out.
    """
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                                        MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES)

    model_type = getattr(config, "model_type", "")
    if model_type in MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES:
        return ENCODER
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return DECODER
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return VLM
    raise unsupported(config, "transformers has no causal-LM, multiple-choice or image-text-to-text class for it")


def unsupported(model_or_config, reason: str) -> ModelError:
    """The one-line error for an architecture raylsl cannot handle as it is: what is wrong, and
    the keys that tell raylsl what it could not find out."""
    return ModelError(f"raylsl cannot train architecture {describe(model_or_config)} as it is: {reason}. "
                      f"Ways out: {WAYS_OUT}")
