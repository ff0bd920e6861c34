"""``raylsl estimate``: what a run needs per GPU (or of this machine), before anything loads.

Reads nothing but the model's config (a named model, a shipped config, a local directory or a hub
id whose config is shipped), so it runs offline and on a CPU head for a 70B model.
"""

from __future__ import annotations

from raylsl.config import RunConfig, parse_memory
from raylsl.errors import ConfigError
from raylsl.fit import CUDA_CONTEXT, GIB, MARGIN, Device, Estimate, change_text, estimate, local_device_memory
from raylsl.plan import check_config
from raylsl.results import format_layers

TERMS = (("weights", "weights"), ("lora_parameters", "LoRA"), ("gradients", "grads"),
         ("optimizer_state", "AdamW"), ("activations", "activ."), ("lm_head", "LM head"),
         ("zero3_gathered", "gathered"), ("buffers", "buffers"))


def estimate_run(config: RunConfig, gpus: int | None = None, gpu_memory: str | None = None,
                 target_tokens: int | None = None) -> Estimate:
    """The estimate of ``config`` on ``gpus`` GPUs of ``gpu_memory`` each (default: the config's
    ``gpu_memory``; else this machine's GPU, or its memory on a CPU).

    Raises:
        ConfigError: ``gpus`` without a memory to count against, or a bad value.
    """
    check_config(config)
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give a number of GPUs >= 1")
    memory = gpu_memory or config.gpu_memory
    if memory is not None:
        device = Device("cuda", parse_memory(memory, "--gpu-memory"), gpus or max(config.workers, 1), f"{memory} GPU")
    else:
        device = local_device_memory()
        if gpus is not None and device.kind != "cuda":
            raise ConfigError("--gpus counts GPUs, and this machine has none: give their memory too, e.g. "
                              "--gpu-memory 80GB")
        device = Device(device.kind, device.capacity, gpus or max(config.workers, 1), device.name)
    return estimate(config, device, target_tokens=target_tokens)


def table(found: Estimate) -> str:
    """The estimate as a table, one option per row, then the verdict on the configured run."""
    device = found.device
    per = "GPU" if device.kind == "cuda" else "process"
    blocks = f"blocks {format_layers(list(found.layers))} ({len(found.layers)} of {found.num_blocks})"
    if not found.layers_known:
        blocks += ", counted from block 0 up until the selector chooses (the most it can need)"
    reserve = f"{MARGIN:.0%} margin" + (f", {CUDA_CONTEXT / GIB:.1f} GiB CUDA context" if device.kind == "cuda" else "")
    lines = [
        f"{found.model} ({found.architecture}, {found.num_blocks} blocks, {found.total_params / 1e9:.2f}B parameters); "
        f"LoRA on {blocks}: {found.lora_params / 1e6:.2f}M trainable",
        f"micro-batch {found.configured.batch_size} x {found.sequence} tokens, {found.targets} target positions, "
        f"{found.dtype}; {device.ranks} x {device.name or device.kind} ({_gb(device.usable)} usable per {per}: "
        f"{reserve})" + ("" if found.traced else "; activations bounded from the blocks' shapes (this model's "
                                                  "forward reads values, so it cannot run on meta tensors)"),
        "ckpt: selective activation checkpointing (from the lowest adapted block); chunk: the LM head and loss in "
        "chunks of that many positions",
        "",
        f"{'GB per ' + per:<50}" + "".join(f"{label:>9}" for _, label in TERMS) + f"{'total':>9}  fits",
    ]
    for option in found.options:
        name = ("configured: " if option is found.configured else "") + option.label().rsplit(", micro-batch", 1)[0]
        fits = "yes" if option.total <= device.usable else "no"
        lines.append(f"{name:<50}" + "".join(f"{option.terms[key] / 1e9:9.2f}" for key, _ in TERMS)
                     + f"{option.total / 1e9:9.2f}  {fits} ({found.margin(option) / 1e9:+.1f})")
    lines.append("")
    verdict = "fits" if found.fits else "does not fit"
    lines.append(f"configured run: {_gb(found.configured.total)} per {per}, {_gb(device.usable)} usable: {verdict}"
                 + (f" (margin {_gb(found.margin())})" if found.fits else ""))
    if not found.fits:
        lines.append(f"cheapest change that fits: {change_text(found.configured, found.suggestion)} "
                     f"({_gb(found.suggestion.total)})" if found.suggestion else
                     "no single change fits: try more GPUs with deepspeed=zero3, a shorter data.max_length, a smaller "
                     "lora.r or a smaller model")
    return "\n".join(lines)


def _gb(value: int) -> str:
    return f"{value / 10**9:.1f} GB"

