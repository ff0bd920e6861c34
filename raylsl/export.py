"""A trained adapter in the form a server loads (``raylsl export``; `raylsl.recipes.export` reads
the run).

    peft    the adapter as saved: ``target_modules`` plus ``layers_to_transform`` / ``layers_pattern``
            and weights for the chosen blocks only. Plain peft and vLLM load it.
    padded  the same adapter with zero A and B for every (block, target) the run did not adapt and
            no layer fields: for loaders that build each target's LoRA over every layer and drop a
            target at the first layer without a weight (TGI, LoRAX). It computes exactly what the
            selective adapter computes.
    merged  the base with the adapter merged in: safetensors, the tokenizer and a config that a
            plain ``from_pretrained`` loads, in the base checkpoint's dtype. For servers without
            LoRA, GGUF conversion (llama.cpp), and encoders (the multiple-choice head is in it).

An export is written to a staging directory beside its destination and renamed into place when it
is complete: a failure leaves nothing at the destination.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from raylsl.errors import ConfigError
from raylsl.models import ModelSpec
from raylsl.models.loading import DTYPES, LoadOptions

FORMATS = ("peft", "padded", "merged")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def export_adapter(adapter: Path, form: str, out: Path, spec: ModelSpec, weights: str = "pretrained") -> Path:
    """Writes the peft adapter in ``adapter``, trained on ``spec``'s model, as ``form`` into ``out``.

    Args:
        adapter: a peft adapter directory (a run's ``adapter/``).
        form: peft, padded or merged (see the module docstring).
        out: a directory that does not exist yet, or is empty.
        spec: the base model. padded reads its structure only (no weights); merged loads it on the
            CPU in its checkpoint's dtype.
        weights: the run's ``model.weights`` (random: the seeded random base it trained on).

    Returns:
        ``out``.

    Raises:
        ConfigError: an unknown form, or ``out`` holds files already.
        RaylslError: the base model cannot be loaded.
    """
    if form not in FORMATS:
        raise ConfigError(f"--format {form!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; remove it or choose another --out")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if form == "peft":
            _write_peft(adapter, staging)
        elif form == "padded":
            _write_padded(adapter, staging, spec.skeleton())
        else:
            _write_merged(adapter, staging, spec, weights)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def adapter_config(adapter: Path) -> dict:
    """The adapter's config with its target lists sorted: the same run always writes the same file."""
    config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
    for key in ("target_modules", "target_parameters"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    return config


def _write_peft(adapter: Path, out: Path) -> None:
    shutil.copy2(Path(adapter) / ADAPTER_WEIGHTS, out / ADAPTER_WEIGHTS)
    _write_config(adapter_config(adapter), out)


def _write_padded(adapter: Path, out: Path, skeleton: nn.Module) -> None:
    """Every block's LoRA weights: the saved ones, zeros where the run chose no adapter (shapes
    from peft itself, on a skeleton of the base on the meta device: nothing is allocated). Where
    the pattern was qualified (another block list shares its name: a vision-language model's vision
    tower), ``exclude_modules`` keeps the adapter off every module outside the adapted list."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    config = adapter_config(adapter)
    pattern = config.get("layers_pattern")
    config.update(layers_to_transform=None, layers_pattern=None)
    if pattern and "." in pattern:
        config["exclude_modules"] = rf"(?!(?:.*\.)?{re.escape(pattern)}\.\d+\.).*"
    if config.get("target_parameters"):  # peft matches a parameter by suffix: the name in a block names it in every block
        block_name = re.compile(rf"^.*?\b{re.escape(pattern or 'layers')}\.\d+\.")
        config["target_parameters"] = sorted({block_name.sub("", name) for name in config["target_parameters"]})
    with torch.device("meta"):
        every_block = get_peft_model(skeleton, LoraConfig.from_peft_type(**config))
    shapes = {key: value.shape for key, value in get_peft_model_state_dict(every_block).items()}
    saved = load_file(Path(adapter) / ADAPTER_WEIGHTS)
    strays = sorted(set(saved) - set(shapes))
    if strays:
        raise ConfigError(f"{adapter}: weight {strays[0]} has no place in the base model's layout; was the adapter "
                          f"trained on another base?")
    dtype = next(iter(saved.values())).dtype
    save_file({key: saved[key] if key in saved else torch.zeros(shape, dtype=dtype) for key, shape in shapes.items()},
              str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    _write_config(config, out)


def _write_merged(adapter: Path, out: Path, spec: ModelSpec, weights: str) -> None:
    from peft import PeftModel

    model, tokenizer = spec.load(LoadOptions(dtype=checkpoint_dtype(spec), weights=weights))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def checkpoint_dtype(spec: ModelSpec) -> torch.dtype:
    """The dtype the base checkpoint stores (its config's ``dtype``), float32 when it says none."""
    dtype = getattr(spec.config(), "dtype", None)
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _write_config(config: dict, out: Path) -> None:
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))

