"""Vision-language models: what their forward takes besides token ids, and tiny ones built from a
config (nothing downloaded) for tests, benchmarks and smoke runs.

A vision-language model (``model.kind=vlm``) is loaded with its processor (``AutoProcessor``): its
tokenizer, its image processor, and the chat template that says where each image goes. The
processor expands an image's placeholder into the image's tokens (LLaVA-1.5: 576 ``<image>``
tokens for a 336-pixel image), and the model puts the vision tower's features, through the
projector, in their place. Training and scoring pass the image processor's tensors
(`IMAGE_INPUTS`) beside ``input_ids``; everything else about the language model is a decoder's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGE_INPUTS = ("pixel_values", "pixel_attention_mask", "image_grid_thw", "image_sizes")
"""What image processors return and image-text-to-text forwards take (LLaVA: ``pixel_values``;
Idefics3: and ``pixel_attention_mask``; Qwen2-VL: and ``image_grid_thw``)."""


def image_inputs(batch: dict) -> dict:
    """The image tensors of a batch (empty for text rows)."""
    return {key: batch[key] for key in IMAGE_INPUTS if key in batch}


def unread_blocks(config, blocks_path: str, num_blocks: int) -> list[int]:
    """Vision-tower blocks whose output the model never reads: LLaVA takes its image features from
    the tower's hidden states at ``vision_feature_layer`` (-2, its default: the output of the last
    block but one), so the blocks after that one get no gradient. Empty for language blocks."""
    from raylsl.models.architectures import architecture

    known = architecture(getattr(config, "model_type", None))
    layer = getattr(config, "vision_feature_layer", None)
    if known is None or blocks_path != known.vision_blocks_path or layer is None:
        return []
    deepest = max(index % (num_blocks + 1) for index in (layer if isinstance(layer, (list, tuple)) else [layer]))
    return list(range(deepest, num_blocks))


def text_tokenizer(tokenizer):
    """The tokenizer itself, also when given a vision-language model's processor."""
    return getattr(tokenizer, "tokenizer", tokenizer)


def _content(image: str) -> str:
    """A chat-template fragment writing a message's content: a string, or parts (images as ``image``)."""
    return ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
            f"{{% if p['type'] == 'image' %}}{image}{{% else %}}{{{{ p['text'] }}}}{{% endif %}}"
            "{% endfor %}{% endif %}")


LLAVA_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}ASSISTANT: " + _content("<image>\n")
                  + "{{ eos_token }}{% else %}USER: " + _content("<image>\n") + "\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
"""LLaVA-1.5's conversation shape (``USER: <image>\\n... ASSISTANT: ...``), for the tiny model."""
IDEFICS3_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}:" + _content("<image>")
                     + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
"""Idefics3's conversation shape (``User:<image>...<end_of_utterance>\\nAssistant:``)."""

TINY_IMAGE = 28
"""Image side of the tiny models (two 14-pixel patches across: 4 image tokens)."""


def tiny_processor(model_type: str = "llava"):
    """A family's processor (``llava``, ``idefics3``) around the byte tokenizer, for 28-pixel images."""
    import transformers

    from raylsl.models.registry import byte_tokenizer

    tokenizer = byte_tokenizer()
    if model_type == "llava":
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
        return transformers.LlavaProcessor(
            image_processor=transformers.CLIPImageProcessorPil(size={"shortest_edge": TINY_IMAGE},
                                                               crop_size={"height": TINY_IMAGE, "width": TINY_IMAGE}),
            tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
            chat_template=LLAVA_TEMPLATE)
    if model_type == "idefics3":
        side = {"longest_edge": TINY_IMAGE}
        return transformers.Idefics3Processor(  # it adds its image tokens to the tokenizer
            image_processor=transformers.Idefics3ImageProcessorPil(do_image_splitting=False, size=side,
                                                                   max_image_size=side),
            tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE)
    raise ValueError(f"no tiny vision-language model of type {model_type!r}: llava or idefics3")


def tiny_vlm(model_type: str = "llava", hidden: int = 32, layers: int = 4, vision_layers: int = 2,
             seed: int = 1234) -> tuple[nn.Module, object]:
    """A random vision-language model of a family (``llava``: a Llama with a CLIP vision tower;
    ``idefics3``: a Llama with a SigLIP-style one) and its processor (`tiny_processor`):
    ``layers`` language blocks and ``vision_layers`` vision blocks of width ``hidden``. Seeded: the
    same model in every process."""
    import transformers

    processor = tiny_processor(model_type)
    config = tiny_vlm_config(model_type, processor.tokenizer, hidden, layers, vision_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModelForImageTextToText.from_config(config)
    return model.eval().requires_grad_(False), processor


def tiny_vlm_config(model_type: str, tokenizer, hidden: int = 32, layers: int = 4, vision_layers: int = 2):
    """`tiny_vlm`'s config: the family's config class around a tiny Llama and vision tower, with
    ``tokenizer``'s vocabulary and ids."""
    import transformers

    vision = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": vision_layers,
              "num_attention_heads": 2, "image_size": TINY_IMAGE, "patch_size": 14}
    if model_type == "llava":
        config_cls, extra = transformers.LlavaConfig, {"vision_config": transformers.CLIPVisionConfig(**vision)}
    else:
        config_cls, extra = transformers.Idefics3Config, {"vision_config": vision, "scale_factor": 1}
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id, "bos_token_id": None}
    # A random frozen head with the usual std 0.02 keeps every logit near 0: nothing to learn from.
    text = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=512, initializer_range=0.2, **ids)
    return config_cls(text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                      pad_token_id=tokenizer.pad_token_id, **extra)


def build_tiny_llava(target: Path) -> None:
    """``tiny-llava``, written like a downloaded model (weights, processor, chat template)."""
    from raylsl.models.registry import save_to_cache

    save_to_cache(*tiny_vlm("llava"), target)
