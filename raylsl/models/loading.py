"""How a base model is loaded where it trains: at its training dtype, optionally quantized, with
an attention kernel, and without a full fp32 copy on the host.

The choices are made by the process that trains (a Ray Train worker on a GPU node, not the
driver): `load_options` turns the run's `ModelSettings` and that process's device into
`LoadOptions`, refusing what the device cannot do with one line that names the key. Weights are
read by ``from_pretrained`` at the dtype (transformers loads tensor by tensor onto the meta-built
model, so the host never holds an fp32 copy of a bf16 checkpoint), straight onto the GPU when
there is one; under ZeRO-3 ``zero.Init`` partitions them as they load (no device map there).

QLoRA (``quantization=4bit``): NF4 with double quantization, computing in the training dtype, the
LM head left unquantized (bitsandbytes' default). peft's ``prepare_model_for_kbit_training`` is
not used: it casts every non-quantized weight to fp32 and makes the embeddings' output require
grad (a backward through every block); the adapters are fp32 already and raylsl's checkpointing
starts at the lowest block that trains.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from raylsl.config import ModelSettings
from raylsl.errors import ConfigError, ModelError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
RANDOM_SEED = 1234
"""Seed of ``model.weights=random``: every process builds the same model."""


@dataclass(frozen=True)
class LoadOptions:
    """How one process loads the base model (see the module docstring)."""

    dtype: torch.dtype = torch.float32
    quantization: str = "none"
    attn_implementation: str = "auto"
    """As configured; ``auto`` is resolved per model class when it loads (`attention_kernel`)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    weights: str = "pretrained"
    sharded: bool = False
    """Loaded inside ZeRO-3's ``zero.Init``: partitioned as it loads, no device map."""


@contextmanager
def unpartitioned() -> Iterator[None]:
    """Models built inside are whole, even in a ZeRO-3 worker: transformers builds every model in
    ``zero.Init`` while an ``HfDeepSpeedConfig`` is alive, and ``zero.Init`` runs collectives, so
    a model built on one rank only (the fit estimate's meta model, on rank 0) would wait forever
    for the other ranks. Also usable as a decorator."""
    from transformers.integrations import deepspeed

    alive = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = alive


def resolve_dtype(settings: ModelSettings, device: torch.device, precision: str = "auto") -> torch.dtype:
    """``model.dtype`` on ``device``: auto is bfloat16 on a GPU that supports it (unless
    ``train.precision=fp32``), else float32. A GPU this process cannot see (an estimate made on a
    CPU head for GPU workers) is taken to support bfloat16, as every GPU since Ampere does.

    Raises:
        ConfigError: bfloat16 on a GPU without bfloat16 support.
    """
    bf16_ok = device.type != "cuda" or not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    if settings.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and bf16_ok and precision != "fp32" else torch.float32
    if settings.dtype == "bfloat16" and not bf16_ok:
        raise ConfigError(f"model.dtype=bfloat16: this GPU ({torch.cuda.get_device_name(device)}) cannot compute in "
                          f"bfloat16; use model.dtype=float16 or float32")
    return DTYPES[settings.dtype]


def load_options(settings: ModelSettings, device: torch.device, precision: str = "auto",
                 sharded: bool = False) -> LoadOptions:
    """The run's model settings, decided for ``device``.

    Raises:
        ConfigError: a dtype, quantization or attention kernel this process cannot run.
    """
    dtype = resolve_dtype(settings, device, precision)
    if settings.quantization != "none":
        _require_bitsandbytes(settings.quantization)
        if dtype == torch.float32:
            raise ConfigError(f"model.quantization={settings.quantization} computes in bfloat16 or float16, and "
                              f"model.dtype resolves to float32 here: set model.dtype=bfloat16")
    if settings.attn_implementation == "flash_attention_2":
        reason = _flash_unusable(device, dtype)
        if reason:
            raise ConfigError(f"model.attn_implementation=flash_attention_2: {reason}; use model.attn_implementation=sdpa "
                              f"(or auto)")
    return LoadOptions(dtype, settings.quantization, settings.attn_implementation, device, settings.weights, sharded)


def _require_bitsandbytes(mode: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"model.quantization={mode} needs bitsandbytes: pip install 'raylsl[qlora]'") from None


def _flash_unusable(device: torch.device, dtype: torch.dtype) -> str | None:
    from transformers.utils import is_flash_attn_2_available

    if device.type != "cuda":
        return "flash attention runs on CUDA GPUs only, and this process trains on the CPU"
    if not is_flash_attn_2_available():
        return "the flash-attn package is not installed here (pip install flash-attn)"
    if dtype not in (torch.bfloat16, torch.float16):
        return "flash attention needs model.dtype=bfloat16 or float16"
    return None


def attention_kernel(options: LoadOptions) -> str | None:
    """The ``attn_implementation`` to ask transformers for: auto means flash_attention_2 where it
    is usable, else None (the model's own default: sdpa where the model has it, else eager)."""
    if options.attn_implementation != "auto":
        return options.attn_implementation
    return None if _flash_unusable(options.device, options.dtype) else "flash_attention_2"


def quantization_config(options: LoadOptions):
    """bitsandbytes' config for ``options.quantization`` (None without quantization)."""
    if options.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    # Under ZeRO-3 the packed 4-bit weights are stored in the training dtype, so DeepSpeed can
    # partition them as ordinary tensors.
    storage = options.dtype if options.sharded else torch.uint8
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=options.dtype, bnb_4bit_quant_storage=storage)


def _device_map(options: LoadOptions) -> dict[str, Any] | None:
    """Loads straight onto the GPU (no host copy) or, quantized, where bitsandbytes quantizes."""
    if options.sharded:
        return None
    if options.quantization != "none" or options.device.type == "cuda":
        return {"": str(options.device) if options.device.type != "cuda" or options.device.index is not None
                else f"cuda:{torch.cuda.current_device()}"}
    return None


def from_pretrained(cls, source: str, options: LoadOptions, name: str) -> nn.Module:
    """``cls.from_pretrained(source)`` as ``options`` say.

    Raises:
        ConfigError: the model does not support the attention kernel asked for.
    """
    kwargs: dict[str, Any] = {"dtype": options.dtype}
    device_map = _device_map(options)
    if device_map is not None:
        kwargs["device_map"] = device_map
    quantization = quantization_config(options)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return _with_kernel(lambda attn: cls.from_pretrained(source, **kwargs, **attn), options, name)


def from_config(cls, config, options: LoadOptions, name: str) -> nn.Module:
    """The architecture of ``config`` with seeded random weights, built where it trains (on the
    GPU directly; partitioned under ZeRO-3), quantized block by block for a quantized run."""
    with torch.random.fork_rng(devices=[options.device] if options.device.type == "cuda" else []):
        torch.manual_seed(RANDOM_SEED)
        if options.quantization != "none":
            return _random_quantized(cls, config, options, name)
        where = torch.device("cpu") if options.sharded else options.device
        with where:
            return _with_kernel(lambda attn: cls.from_config(config, dtype=options.dtype, **attn), options, name)


def _with_kernel(build, options: LoadOptions, name: str) -> nn.Module:
    kernel = attention_kernel(options)
    try:
        return build({"attn_implementation": kernel} if kernel else {})
    except (ValueError, ImportError) as exc:
        if options.attn_implementation == "auto" and kernel is not None:
            return build({})  # flash attention installed, but not for this model: its default
        if kernel is not None and "attn" in str(exc).lower():
            raise ConfigError(f"model.attn_implementation={kernel}: {name} cannot use it "
                              f"({str(exc).strip().splitlines()[0]}); use model.attn_implementation=auto") from None
        raise


def _random_quantized(cls, config, options: LoadOptions, name: str) -> nn.Module:
    """A random model whose block linears are bitsandbytes layers, quantized one at a time from
    random weights on the device (never the whole unquantized model in memory)."""
    import bitsandbytes as bnb
    from accelerate import init_empty_weights
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    with init_empty_weights(include_buffers=False):
        model = _with_kernel(lambda attn: cls.from_config(config, dtype=options.dtype, **attn), options, name)
    head = model.get_output_embeddings()
    skip = [n for n, m in model.named_modules() if m is head]
    model = replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=quantization_config(options))
    std = getattr(config, "initializer_range", 0.02)
    device = options.device
    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            weight = torch.randn(module.out_features, module.in_features, dtype=options.dtype, device=device) * std
            if isinstance(module, bnb.nn.Linear4bit):
                module.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                                  compress_statistics=True, quant_storage=torch.uint8).to(device)
            else:
                module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(device)
            if module.bias is not None:
                module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=options.dtype, device=device),
                                           requires_grad=False)
    for owner, key, param in [(m, k, p) for m in model.modules() for k, p in m.named_parameters(recurse=False)]:
        if param.is_meta:
            fresh = torch.empty(param.shape, dtype=options.dtype, device=device)
            fresh.normal_(0.0, std) if param.dim() > 1 else fresh.fill_(1.0 if key == "weight" else 0.0)
            setattr(owner, key, nn.Parameter(fresh, requires_grad=False))
    model.to(device)  # buffers (rotary frequencies) were built on the host
    model.tie_weights()
    return model


def loaded_error(name: str, exc: Exception) -> ModelError:
    """A load failure the user can act on (bad name, no network for a hub id, a broken directory)."""
    return ModelError(f"cannot load model '{name}': {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}. "
                      f"Check model.name, or pass a local directory; hub names need network access to the hub.")
