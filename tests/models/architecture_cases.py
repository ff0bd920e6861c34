"""The architecture matrix's cases: a tiny random model of every family in
`raylsl.models.ARCHITECTURES` (built from the family's own config class: hidden 16, 4 blocks, a
byte-level vocabulary; a vision-language model adds a 2-block vision tower and its processor;
nothing downloaded), the data its heads train on (with coloured squares for a vision-language
model), and the support table in ``docs/architectures.md``, generated from the table and from what
the matrix runs.

Regenerate the doc after changing the table or the matrix (with the other generated docs):

    python docs/generate.py
"""

from __future__ import annotations

import io

import torch
import transformers

from raylsl.data import GenExample, MCExample
from raylsl.models import ARCHITECTURES, ENCODER, VLM, Architecture, byte_tokenizer
from raylsl.models.vision import TINY_IMAGE, tiny_processor, tiny_vlm, tiny_vlm_config

LAYERS = [1, 3]
"""The blocks the matrix adapts (of 4): the first and last are not both chosen, nor adjacent ones."""
STATIC_SELECTORS = ("cka", "activation", "gradient", "flexora", "all", "first", "last", "random", "contiguous", "list")
DYNAMIC_SELECTORS = ("ist", "lisa")
HEADS = {"decoder": ("mc", "generative"), "encoder": ("mc",), "vlm": ("mc", "generative")}
EXPORT_FORMS = ("peft", "padded", "merged")

_SIZE = {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2}
_DENSE = {**_SIZE, "intermediate_size": 32}
_GQA = {**_DENSE, "num_key_value_heads": 1}
_MOE = {"num_experts_per_tok": 2}
TINY: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", _GQA),
    "mistral": ("MistralConfig", _GQA),
    "qwen2": ("Qwen2Config", _GQA),
    "qwen3": ("Qwen3Config", {**_GQA, "head_dim": 8}),
    "gemma2": ("Gemma2Config", {**_GQA, "head_dim": 8}),
    "gemma3_text": ("Gemma3TextConfig", {**_GQA, "head_dim": 8}),
    "phi3": ("Phi3Config", _GQA),
    "gpt_neox": ("GPTNeoXConfig", _DENSE),
    "gpt2": ("GPT2Config", {"n_embd": 16, "n_layer": 4, "n_head": 2}),
    "falcon": ("FalconConfig", _SIZE),
    "opt": ("OPTConfig", {**_SIZE, "ffn_dim": 32, "word_embed_proj_dim": 16}),
    "mixtral": ("MixtralConfig", {**_GQA, **_MOE, "num_local_experts": 4}),
    "qwen2_moe": ("Qwen2MoeConfig", {**_GQA, **_MOE, "num_experts": 4, "moe_intermediate_size": 16,
                                     "shared_expert_intermediate_size": 32}),
    "bert": ("BertConfig", _DENSE),
    "roberta": ("RobertaConfig", _DENSE),
    "deberta-v2": ("DebertaV2Config", _DENSE),
    "modernbert": ("ModernBertConfig", _DENSE),
}
"""model_type -> (config class, its tiny sizes)."""
TINY_VLM = ("llava", "idefics3")
"""The vision-language families, built with their processors by `tiny_vlm`."""
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def tiny_config(arch: Architecture):
    """The family's config class at the tiny sizes, with the byte tokenizer's vocabulary and ids."""
    if arch.kind == VLM:
        return tiny_vlm_config(arch.model_type, tiny_processor(arch.model_type).tokenizer, hidden=16)
    class_name, sizes = TINY[arch.model_type]
    tokenizer = byte_tokenizer(encoder=arch.kind == ENCODER)
    ids = ({"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id} if arch.kind == ENCODER else
           {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None})
    # A random frozen head with the usual std 0.02 keeps every logit near 0: nothing to learn from.
    return getattr(transformers, class_name)(vocab_size=len(tokenizer), max_position_embeddings=256,
                                             initializer_range=0.2, **sizes, **ids)


def tiny_model(arch: Architecture) -> torch.nn.Module:
    """The family's tiny model (causal LM, multiple choice, image-text-to-text), seeded: the same
    in every call."""
    if arch.kind == VLM:
        return tiny_vlm(arch.model_type, hidden=16, seed=0)[0]
    cls = transformers.AutoModelForMultipleChoice if arch.kind == ENCODER else transformers.AutoModelForCausalLM
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls.from_config(tiny_config(arch))
    return model.eval().requires_grad_(False)


def tokenizer(arch: Architecture):
    """The family's tokenizer: the byte tokenizer, or a vision-language model's processor."""
    return tiny_processor(arch.model_type) if arch.kind == VLM else byte_tokenizer(encoder=arch.kind == ENCODER)


def square(colour: str, size: int = TINY_IMAGE) -> bytes:
    """A PNG of one colour."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def mc_examples(n: int = 8, arch: Architecture | None = None) -> list[MCExample]:
    """A learnable 2-way task: is the named colour warm? For a vision-language model: is the
    colour shown warm?"""
    colours = list(COLOURS)
    if arch is not None and arch.kind == VLM:
        return [MCExample("Warm colour?", ("no", "yes"), int(colours[i % 4] in ("red", "yellow")),
                          (square(colours[i % 4]),)) for i in range(n)]
    return [MCExample(f"Item {i} is {colours[i % 4]}. Warm?", ("no", "yes"), int(i % 2 == 0)) for i in range(n)]


def gen_examples(n: int = 8, arch: Architecture | None = None) -> list[GenExample]:
    """Completion rows: the warmth of a named colour. For a vision-language model, chat rows: the
    colour shown."""
    colours = list(COLOURS)
    if arch is not None and arch.kind == VLM:
        return [GenExample("chat", messages=(("user", (0, "What colour is this?")), ("assistant", colours[i % 4])),
                           images=(square(colours[i % 4]),)) for i in range(n)]
    return [GenExample("completion", prompt=f"Item {i} is {colours[i % 4]}. ",
                       completion="warm" if i % 2 == 0 else "cold") for i in range(n)]


def support_table() -> str:
    """``docs/architectures.md``: every family the matrix tests, and what it tests."""
    lines = [
        "# Supported architectures",
        "",
        "Generated by `python docs/generate.py` (`make docs`) from `raylsl/models/architectures.py` and the",
        "architecture matrix (`tests/models/test_architectures.py`), which runs every row on a tiny random model",
        "built from the family's own config class; `tests/test_docs.py` fails when this file is stale. Families",
        "not listed still run when their blocks are found and hold linear layers: see `model.kind`, `blocks_path`",
        "and `lora.target_modules` in [configuration.md](configuration.md).",
        "",
        "| architecture | `model_type` | kind | blocks path | default LoRA targets | heads | selectors tested | export forms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    selectors = ", ".join(STATIC_SELECTORS + DYNAMIC_SELECTORS)
    for arch in ARCHITECTURES:
        targets = ("Conv1D " if arch.conv1d else "") + ", ".join(
            f"`{t}`" + (" (fused)" if t in arch.fused else "") for t in arch.targets)
        if arch.experts:
            targets += "; not the routed experts " + ", ".join(f"`{e}`" for e in arch.experts)
        tower = f" (vision tower: `{arch.vision_blocks_path}`)" if arch.vision_blocks_path else ""
        blocks = f"`{arch.blocks_path}`{tower}"
        lines.append(f"| {arch.name} | `{arch.model_type}` | {arch.kind} | {blocks} | {targets} | "
                     f"{'; '.join(arch.heads)} | {selectors} | {', '.join(EXPORT_FORMS)} |")
    lines += [
        "",
        "What each row is tested for: the blocks are found in order (4 of 4, embeddings and head outside them),",
        "the default targets are every weight matrix of a block but router gates and MoE experts, the",
        "trainable parameter count equals peft's for the same targets and a hand count, every selector's",
        "adapters sit on exactly its blocks (read from the module names holding LoRA weights; IST and LISA:",
        "only the active block's weights move), two steps lower the loss on a fixed batch for each head",
        "(encoders refuse generative data in one line), and each export form reloads (peft and padded",
        "through peft, merged through `from_pretrained`) with the trained model's logits to 1e-5 in fp32.",
        "",
        "Vision-language rows (LLaVA: a Llama with a CLIP vision tower; Idefics3: a Llama with a SigLIP-style",
        "one) run the same tests on image+text data (coloured squares: chat rows asking for the colour, and",
        "multiple-choice rows), loaded with their processor; LoRA targets the language blocks' projections,",
        "and the vision tower and projector hold no adapter and no trainable weight. `blocks_path` may name",
        "the vision tower's blocks instead (see `docs/vision.md`).",
        "",
        "Router gates are never targets. MoE routed experts are fused 3-D weights in transformers 5; raylsl",
        "leaves them frozen by default and warns naming them, because peft's LoRA on a raw weight",
        "(`target_parameters`) has no dropout, IST's and Flexora's per-block gates cannot scale it, and",
        "TGI, LoRAX and llama.cpp serve no expert adapters.",
        "`lora.target_parameters=[mlp.experts.down_proj,mlp.experts.gate_up_proj] lora.dropout=0` adapts them",
        "too (tested on both MoE rows: placement, parameter count, two steps of training and the three export",
        "forms; IST and Flexora refuse it).",
        "",
    ]
    return "\n".join(lines)

