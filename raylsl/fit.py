"""Will a run fit? What it needs per GPU (or of the host's memory on a CPU), estimated before
anything loads, and the cheapest change that makes a run that does not fit, fit.

`estimate` builds the model on the meta device from its config alone, puts LoRA on the planned
blocks exactly as training will (`raylsl.lora.apply_lora`), and composes, per device:

    weights           the frozen base at its dtype, or 4/8-bit (ZeRO-3: 1/N of it)
    lora_parameters   the trainable parameters (fp32; DeepSpeed: bf16 copy + fp32 master)
    gradients         of the trainable parameters (ZeRO-2/3: 1/N)
    optimizer_state   AdamW's two moments (ZeRO-1/2/3: 1/N)
    activations       the peak one training step adds (forward, backward), head excluded:
                      a training step run on meta tensors (`raylsl.models.memory.trace_step`)
    lm_head           what the LM head's logits and the loss add to that peak
    zero3_gathered    ZeRO-3: the full weights of the block being computed, plus the prefetch
    buffers           DeepSpeed's gradient reduction bucket; the dequantized weight of the
                      largest quantized layer while it runs

A run fits when the total leaves ``MARGIN`` of the device free (fragmentation, kernels'
workspaces) and, on a GPU, room for the CUDA context (not in ``max_memory_allocated``). Before a
data-scored selector (cka, activation, gradient, flexora) has chosen, the blocks are not known:
the estimate then takes the budget's count from block 0 up, the most such a selection can need.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from raylsl.config import RunConfig, parse_memory
from raylsl.errors import RaylslError
from raylsl.models.loading import unpartitioned

GIB = 2**30
MARGIN = 0.10
"""Share of a device's memory the estimate leaves free."""
CUDA_CONTEXT = GIB
"""The CUDA context and cuBLAS/NCCL workspaces a GPU process holds outside PyTorch's allocator."""
MC_TARGETS = 8
"""Multiple choice: answer tokens per sequence the head and loss run on (answers are short)."""
ENCODER_CHOICES = 2
"""Encoders: choices per example the estimate assumes."""
DEEPSPEED_PREFETCH = 5 * 10**7
"""ZeRO-3's default prefetch bucket (parameters)."""
CHUNK = 1024
"""The loss chunk the fit check suggests (``train.loss_chunk``)."""
MIN_BUCKET = 10**6
"""The smallest ZeRO gradient reduction bucket raylsl gives DeepSpeed (elements; see
`raylsl.distributed.deepspeed_engine.sized_buckets`)."""


class DoesNotFit(RaylslError):
    """The run cannot fit where it trains; the message names the cheapest change that fits."""


class Untraceable(Exception):
    """A model's training step cannot run on meta tensors (its forward reads values)."""


@dataclass(frozen=True)
class Device:
    """Where the run trains: the kind, one device's memory, how many data-parallel ranks."""

    kind: str
    """cuda or cpu."""
    capacity: int
    """Bytes of one device (a GPU's memory; on CPU, the memory available to this machine now)."""
    ranks: int = 1
    name: str = ""

    @property
    def usable(self) -> int:
        """What a run may use: the capacity less the margin and, on a GPU, the CUDA context."""
        return int(self.capacity * (1 - MARGIN)) - (CUDA_CONTEXT if self.kind == "cuda" else 0)


@dataclass(frozen=True)
class Option:
    """One way to run: ZeRO stage (None: no DeepSpeed), quantization, checkpointing, micro-batch."""

    zero: int | None
    quantization: str
    checkpointing: bool
    loss_chunk: int
    batch_size: int
    terms: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def label(self) -> str:
        parts = ["no DeepSpeed" if self.zero is None else f"ZeRO-{self.zero}",
                 {"none": "", "4bit": "4-bit", "8bit": "8-bit"}[self.quantization],
                 "selective ckpt" if self.checkpointing else "",
                 f"chunk {self.loss_chunk}" if self.loss_chunk else ""]
        return ", ".join(p for p in parts if p) + f", micro-batch {self.batch_size}"


@dataclass
class Estimate:
    """What `estimate` returns; ``configured`` is the run as configured, ``options`` the table."""

    model: str
    architecture: str
    num_blocks: int
    layers: tuple[int, ...]
    layers_known: bool
    """False when a data-scored selector has not chosen yet (worst case from block 0)."""
    total_params: int
    lora_params: int
    sequence: int
    targets: int
    """Positions per micro-batch the head and loss run on."""
    dtype: str
    device: Device
    configured: Option
    options: list[Option]
    suggestion: Option | None = None
    """The cheapest change that fits, when the configured run does not."""
    traced: bool = True
    """False when the model's forward reads tensor values (MoE routing, some encoders): its step
    cannot run on the meta device, and activations and head are upper bounds from its shapes."""

    @property
    def fits(self) -> bool:
        return self.configured.total <= self.device.usable

    def margin(self, option: Option | None = None) -> int:
        return self.device.usable - (option or self.configured).total

    def to_dict(self) -> dict[str, Any]:
        def plain(option: Option) -> dict[str, Any]:
            return {"zero": option.zero, "quantization": option.quantization, "checkpointing": option.checkpointing,
                    "loss_chunk": option.loss_chunk, "batch_size": option.batch_size, "terms": dict(option.terms),
                    "total": option.total, "fits": option.total <= self.device.usable, "margin": self.margin(option)}

        return {"model": self.model, "architecture": self.architecture, "num_blocks": self.num_blocks,
                "traced": self.traced,
                "layers": list(self.layers), "layers_known": self.layers_known,
                "parameters": {"total": self.total_params, "lora": self.lora_params},
                "sequence": self.sequence, "targets_per_micro_batch": self.targets, "dtype": self.dtype,
                "device": {"kind": self.device.kind, "name": self.device.name, "capacity": self.device.capacity,
                           "usable": self.device.usable, "ranks": self.device.ranks},
                "configured": plain(self.configured), "options": [plain(o) for o in self.options],
                "suggestion": plain(self.suggestion) if self.suggestion else None}


# --- the device ----------------------------------------------------------------------------------

def local_device_memory() -> Device:
    """This machine's accelerator: its GPU's memory, or on CPU the memory available now."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return Device("cuda", props.total_memory, 1, props.name)
    return Device("cpu", available_host_memory(), 1, "this machine's available memory")


def available_host_memory() -> int:
    """``MemAvailable`` of this machine (Linux), else its physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def target_device(config: RunConfig) -> Device | None:
    """Where ``config`` trains, as far as this process can tell: GPUs of the ``gpu_memory`` it
    names, this process's own device when it trains here (``workers=0``), else None (Ray workers
    on nodes this process cannot see check for themselves)."""
    ranks = max(config.workers, 1)
    if config.gpu_memory is not None:
        return Device("cuda", parse_memory(config.gpu_memory, "gpu_memory"), ranks, f"{config.gpu_memory} GPU")
    if config.workers == 0:
        return local_device_memory()
    return None


# --- the estimate --------------------------------------------------------------------------------

@unpartitioned()
def estimate(config: RunConfig, device: Device, layers: list[int] | None = None,
             target_tokens: int | None = None, generative: bool | None = None, table: bool = True) -> Estimate:
    """What ``config`` needs per device on ``device`` (see the module docstring).

    Args:
        layers: the blocks that get adapters, when chosen; None plans them from the config.
        target_tokens: positions per sequence the LM head and loss run on (default: every position
            for generative tasks, `MC_TARGETS` for multiple choice).
        generative: whether the task's rows are generative (default: `task_is_generative`).
        table: also the other ZeRO stages, 4-bit and checkpointing (else the configured run only).

    Raises:
        RaylslError: the model's config cannot be read, or its blocks found.
    """
    from raylsl.models import ENCODER, find_blocks, resolve_model
    from raylsl.models.loading import resolve_dtype

    spec = resolve_model(config.model.name, config.model.kind)
    skeleton_config = spec.config()
    compute = resolve_dtype(config.model, torch.device(device.kind), config.train.precision)
    if config.model.quantization != "none" and compute == torch.float32:
        compute = torch.bfloat16
    model = _meta_model(spec, skeleton_config, compute, config.model.attn_implementation)
    blocks_path, blocks = find_blocks(model, config.blocks_path)
    known = layers is not None
    layers = list(layers) if known else planned_layers(config, len(blocks))
    known = known or _layers_known(config)
    encoder = spec.kind == ENCODER
    generative = task_is_generative(config) if generative is None else generative
    sequence = config.data.max_length
    per_sequence = target_tokens if target_tokens is not None else (sequence if generative else MC_TARGETS)
    total_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    peft_model = _with_lora(model, config, layers, blocks_path, blocks, spec.kind, autocast=_autocasts(config, device))
    lora_params = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    steps = _StepTraces(peft_model, blocks, min(layers), encoder, config.train.batch_size, sequence, per_sequence,
                        device.kind)
    base = Option(_zero(config), config.model.quantization, _checkpointing_on(config), config.train.loss_chunk,
                  config.train.batch_size)
    state = _State(peft_model, blocks, compute, lora_params, device.ranks)
    compose = lambda option: dataclasses.replace(option, terms=state.terms(option, steps))  # noqa: E731
    traced = True
    try:
        configured = compose(base)
    except Untraceable:  # the forward reads values: bound the step from the blocks' shapes instead
        traced = False
        steps = _Bound(peft_model, blocks, min(layers), encoder, sequence, per_sequence,
                       torch.empty(0, dtype=compute).element_size(), model.config._attn_implementation == "eager")
        configured = compose(base)
    options = [configured]
    if table:
        for quantization in dict.fromkeys((config.model.quantization, "4bit")):
            for zero in (0, 1, 2, 3):
                for checkpointing in (False, True):
                    option = dataclasses.replace(base, zero=zero, quantization=quantization, checkpointing=checkpointing)
                    if option != base:
                        options.append(compose(option))
    result = Estimate(config.model.name, getattr(skeleton_config, "model_type", type(model).__name__), len(blocks),
                      tuple(layers), known, total_params, lora_params, sequence,
                      per_sequence * config.train.batch_size, str(compute).removeprefix("torch."), device, configured,
                      options, traced=traced)
    if not result.fits:
        result.suggestion = _cheapest_fit(base, compose, device)
    return result


def estimated_memory(config: RunConfig, device_kind: str, layers: list[int], ranks: int = 1,
                     checkpointing: bool | None = None, generative: bool | None = None) -> int | None:
    """The estimate's total for the run as it trains (bytes per device, `estimate`'s configured
    option): what a run records as ``estimated_memory`` beside its measured ``peak_memory``. None
    when the model's config cannot be estimated (the objective is then left out, not guessed).

    Args:
        checkpointing: whether activation checkpointing is on (``auto`` resolved by the fit check);
            None reads the config.
    """
    if checkpointing is not None:
        config = _with(config, "train.activation_checkpointing", "on" if checkpointing else "off")
    try:
        found = estimate(config, Device(device_kind, 0, ranks), list(layers), generative=generative, table=False)
    except Exception as exc:  # noqa: BLE001 (a cost record never fails the run it describes)
        import warnings

        from raylsl.errors import RaylslWarning

        warnings.warn(f"no estimated_memory for this run: the estimate failed ({type(exc).__name__}: {exc})",
                      RaylslWarning, stacklevel=2)
        return None
    return int(found.configured.total)


def planned_layers(config: RunConfig, num_blocks: int) -> list[int]:
    """The blocks a run will adapt, as far as the config says before any scoring: listed blocks;
    a heuristic or dynamic selector's choice (no data needed); for a data-scored selector, its
    budget's count from block 0 up (the worst case: backward through every block)."""
    from raylsl.lora import parse_layers
    from raylsl.selectors import Budget, build_selector, run_selector

    if config.selector is None:
        return parse_layers(config.layers, num_blocks)
    selector = build_selector(config.selector, config.selector_options.get(config.selector))
    budget = Budget(config.n, config.threshold, config.mass)
    if not selector.needs_data:
        return run_selector(selector, budget, num_blocks, None, None).layers
    count = budget.count(num_blocks) if config.n is not None else num_blocks
    return list(range(count))


def _layers_known(config: RunConfig) -> bool:
    from raylsl.selectors import build_selector

    return config.selector is None or not build_selector(config.selector).needs_data


def task_is_generative(config: RunConfig) -> bool:
    """Whether the task's rows are generative: from ``task.format`` where it says, else from the
    rows (built-in tasks and files are read; a hub dataset that cannot be read here counts as
    generative, the upper bound of what the head needs)."""
    from raylsl.data import GENERATIVE_FORMATS, GenExample, read_examples

    if config.task.format != "auto":
        return config.task.format in GENERATIVE_FORMATS
    try:
        examples = read_examples(config.task, config.data)
    except RaylslError:
        return True
    return bool(examples) and isinstance(examples[0], GenExample)


def _zero(config: RunConfig) -> int | None:
    if config.deepspeed is None or config.workers == 0:
        return None
    from raylsl.config import deepspeed_config

    return int(deepspeed_config(config.deepspeed).get("zero_optimization", {}).get("stage", 0))


def _checkpointing_on(config: RunConfig) -> bool:
    return config.train.activation_checkpointing == "on"


def _autocasts(config: RunConfig, device: Device) -> bool:
    return config.train.precision == "bf16" or (config.train.precision == "auto" and device.kind == "cuda")


def _meta_model(spec, skeleton_config, dtype: torch.dtype, attention: str):
    """The model on the meta device at the compute dtype, with sdpa attention (eager when asked,
    or when the model has no sdpa: a run gets the same)."""
    import copy

    from raylsl.models.registry import model_class

    cls = model_class(spec.kind, skeleton_config)
    kernel = "eager" if attention == "eager" else "sdpa"
    with torch.device("meta"):
        try:
            model = cls.from_config(copy.deepcopy(skeleton_config), dtype=dtype, attn_implementation=kernel)
        except (ValueError, ImportError):  # no sdpa for this model: eager, as a run would get
            model = cls.from_config(copy.deepcopy(skeleton_config), dtype=dtype, attn_implementation="eager")
    return model.requires_grad_(False)


def _with_lora(model, config: RunConfig, layers: list[int], blocks_path: str, blocks, kind: str, autocast: bool):
    """LoRA as training puts it; under autocast its matmuls run in the compute dtype, so the
    adapters are traced in it (their fp32 copies are counted as parameters)."""
    from raylsl.lora import apply_lora

    with torch.device("meta"):  # peft builds adapters on the default device before moving them
        peft_model = apply_lora(model, layers, config.lora, blocks_path, blocks, kind)
    if autocast:
        dtype = next(p.dtype for p in model.parameters() if not p.requires_grad)
        for param in peft_model.parameters():
            if param.requires_grad:
                param.data = param.data.to(dtype)
    return peft_model


class _StepTraces:
    """Meta training steps at the run's micro-batch, traced once per (checkpointing, loss chunk).
    A smaller micro-batch (a suggestion) scales them: every activation has the batch as a
    dimension, and so do the logits unless the head runs in chunks (then they do not shrink)."""

    def __init__(self, model, blocks, lowest: int, encoder: bool, batch: int, sequence: int, targets: int,
                 device: str):
        self.model, self.blocks, self.lowest = model, blocks, lowest
        self.encoder, self.batch, self.sequence, self.targets, self.device = encoder, batch, sequence, targets, device
        self._cache: dict[tuple, int] = {}

    def __call__(self, checkpointing: bool, loss_chunk: int, batch: int) -> tuple[int, int]:
        """``(activations, lm_head)``: the step's peak without the head, and what the head adds."""
        activations = self._peak(checkpointing, 0, head=False)
        head = max(self._peak(checkpointing, loss_chunk, head=True) - activations, 0)
        if batch == self.batch:
            return activations, head
        return activations * batch // self.batch, head if loss_chunk else head * batch // self.batch

    def _peak(self, checkpointing: bool, loss_chunk: int, head: bool) -> int:
        key = (checkpointing, loss_chunk, head)
        if key not in self._cache:
            from raylsl.models.checkpointing import checkpoint_blocks, uncheckpoint_blocks
            from raylsl.models.memory import trace_step

            if checkpointing:
                checkpoint_blocks(self.blocks, self.lowest)
            try:
                self._cache[key] = trace_step(self.model, self.batch, self.sequence,
                                              self.targets * self.batch if head else 0, self.encoder,
                                              ENCODER_CHOICES, loss_chunk, self.device)
            except (RuntimeError, NotImplementedError) as exc:  # a kernel or a check that reads values
                raise Untraceable(str(exc)) from None
            finally:
                uncheckpoint_blocks(self.blocks)
        return self._cache[key]


class _State:
    """The model-state terms of an option (arithmetic over the meta model's parameters)."""

    def __init__(self, model, blocks, compute: torch.dtype, trainable: int, ranks: int):
        from raylsl.models.memory import dequantized_bytes, weight_bytes

        self.compute, self.trainable, self.ranks = compute, trainable, ranks
        self.weights = {q: weight_bytes(model, compute, q) for q in ("none", "4bit", "8bit")}
        self.dequantized = dequantized_bytes(model, compute)
        size = torch.empty(0, dtype=compute).element_size()
        self.largest_block = max(sum(p.numel() for p in b.parameters()) for b in blocks) * size

    def terms(self, option: Option, steps: _StepTraces) -> dict[str, int]:
        n = self.ranks if option.zero is not None else 1
        zero = option.zero if option.zero is not None else -1
        activations, head = steps(option.checkpointing, option.loss_chunk, option.batch_size)
        half = torch.empty(0, dtype=self.compute).element_size()
        # peft keeps adapters in fp32; DeepSpeed trains a compute-dtype copy against an fp32 master.
        copy = self.trainable * half if option.zero is not None and half < 4 else 0
        buffers = self.dequantized if option.quantization != "none" else 0
        if zero >= 1:  # the gradient reduction bucket, which raylsl sizes to the trainable parameters
            buffers += max(self.trainable, MIN_BUCKET) * (4 if zero == 1 else half)
        # bitsandbytes weights are not partitioned as they load: under ZeRO-3 every GPU holds the
        # whole quantized model first (DeepSpeed partitions it afterwards)
        shard = n if zero == 3 and option.quantization == "none" else 1
        return {
            "weights": self.weights[option.quantization] // shard,
            "lora_parameters": copy + self.trainable * 4 // (n if zero >= 1 else 1),
            "gradients": self.trainable * 4 // (n if zero >= 2 else 1),
            "optimizer_state": self.trainable * 8 // (n if zero >= 1 else 1),
            "activations": activations,
            "lm_head": head,
            "zero3_gathered": self.largest_block + DEEPSPEED_PREFETCH * half if zero == 3 else 0,
            "buffers": buffers,
        }


def _cheapest_fit(base: Option, compose, device: Device) -> Option | None:
    """The first change, cheapest first, that fits: the chunked loss, selective checkpointing,
    both, smaller micro-batches (more accumulation), ZeRO-3 across the GPUs, 4-bit."""
    levers = {"loss_chunk": base.loss_chunk or CHUNK, "checkpointing": True}
    candidates = [{"loss_chunk": levers["loss_chunk"]}, {"checkpointing": True}, dict(levers)]
    batch = base.batch_size // 2
    while batch >= 1:
        candidates.append({**levers, "batch_size": batch})
        batch //= 2
    if device.ranks > 1 and base.zero != 3:
        candidates += [{"zero": 3}, {**levers, "zero": 3}]
    if base.quantization == "none":
        candidates += [{"quantization": "4bit"}, {**levers, "quantization": "4bit"},
                       {**levers, "quantization": "4bit", "batch_size": 1}]
    for change in candidates:
        option = compose(dataclasses.replace(base, **change))
        if option != base and option.total <= device.usable:
            return option
    return None


def change_text(base: Option, option: Option) -> str:
    """The config keys that turn ``base`` into ``option``."""
    keys = []
    if option.loss_chunk != base.loss_chunk:
        keys.append(f"train.loss_chunk={option.loss_chunk}")
    if option.checkpointing != base.checkpointing:
        keys.append("train.activation_checkpointing=on")
    if option.batch_size != base.batch_size:
        factor = base.batch_size // option.batch_size
        keys.append(f"train.batch_size={option.batch_size} train.grad_accum=<{factor}x yours>")
    if option.zero != base.zero:
        keys.append(f"deepspeed=zero{option.zero}")
    if option.quantization != base.quantization:
        keys.append(f"model.quantization={option.quantization}")
    return " ".join(keys)


# --- the check before a run --------------------------------------------------------------------

BOUND_PER_WIDTH = 6
"""A block's activations per token are at most this many elements per unit of its weights'
summed output width (measured 2-3 on the families of the architecture matrix, LoRA with dropout,
fp32 and bf16)."""
HEAD_BOUND = 16
"""Bytes per (target position x vocabulary entry) the head and loss can hold at once, at most."""


def block_width(block: torch.nn.Module, experts_per_token: int = 1) -> int:
    """The summed output width of a block's frozen weights: linear layers (``out_features``),
    GPT-2's Conv1D (``nf``) and fused expert weights (per routed token). Adapters are not counted."""
    width = 0
    for module in block.modules():
        weight = module._parameters.get("weight")  # its own: peft's wrappers only forward the base's
        if weight is not None and not weight.requires_grad and weight.dim() == 2:
            width += getattr(module, "out_features", None) or getattr(module, "nf", None) or 0
        width += sum(p.shape[1] * experts_per_token for p in module._parameters.values()
                     if p is not None and p.dim() == 3 and not p.requires_grad)
    return width


class _Bound:
    """Upper bounds of a step's activations and head from the blocks' shapes: the shortcut of the
    fit check, and the estimate of a model whose forward reads tensor values (which meta tensors
    do not have, so it cannot be traced)."""

    def __init__(self, model, blocks, lowest: int, encoder: bool, sequence: int, targets: int, size: int,
                 eager: bool):
        from raylsl.models.heads import output_head

        config = model.config
        self.width = max(block_width(b, getattr(config, "num_experts_per_tok", 1)) for b in blocks)
        self.hidden = model.get_input_embeddings().weight.shape[1]
        self.heads = getattr(config, "num_attention_heads", 0) if eager else 0
        self.grad_blocks, self.sequence, self.targets, self.size = len(blocks) - lowest, sequence, targets, size
        self.choices = ENCODER_CHOICES if encoder else 1
        self.vocab = 0 if encoder else getattr(output_head(model), "out_features", 0)

    def __call__(self, checkpointing: bool, loss_chunk: int, batch: int) -> tuple[int, int]:
        tokens = batch * self.sequence * self.choices
        block = tokens * (BOUND_PER_WIDTH * self.width + 2 * self.heads * self.sequence) * self.size
        kept = tokens * self.hidden * self.size * self.grad_blocks + block if checkpointing \
            else block * self.grad_blocks
        targets = self.targets * batch
        return kept, (min(targets, loss_chunk) if loss_chunk else targets) * self.vocab * HEAD_BOUND


def quick_bound(config: RunConfig, device: Device, layers: list[int] | None = None) -> int:
    """A cheap upper bound of what the run needs per device (weights exact, activations and head
    bounded from the blocks' shapes), so that a run far from its device's limit skips the traced
    estimate."""
    from raylsl.models import ENCODER, find_blocks, resolve_model
    from raylsl.models.loading import resolve_dtype
    from raylsl.models.memory import weight_bytes

    spec = resolve_model(config.model.name, config.model.kind)
    model = spec.skeleton()
    dtype = resolve_dtype(config.model, torch.device(device.kind), config.train.precision)
    blocks = find_blocks(model, config.blocks_path)[1]
    layers = layers if layers is not None else planned_layers(config, len(blocks))
    size = max(torch.empty(0, dtype=dtype).element_size(), 4 if config.model.quantization == "none" else 2)
    sequence = config.data.max_length
    bound = _Bound(model, blocks, min(layers), spec.kind == ENCODER, sequence, sequence, size,
                   config.model.attn_implementation == "eager")
    activations, head = bound(config.train.activation_checkpointing == "on", config.train.loss_chunk,
                              config.train.batch_size)
    trainable = sum(sum(p.shape) for b in blocks for p in b.parameters() if p.dim() >= 2) * config.lora.r * 20
    return weight_bytes(model, dtype) + activations + head + trainable  # 20: fp32 weight, grad, moments, copy


def check_fit(config: RunConfig, device: Device | None, layers: list[int] | None = None,
              generative: bool | None = None) -> bool | None:
    """The check every run makes before it loads the model. Returns whether activation
    checkpointing is on (``auto`` resolved: on only when the run does not fit without it; None
    when ``device`` is unknown here, so the workers decide).

    Raises:
        DoesNotFit: the run cannot fit on ``device``; the message names the cheapest change.
    """
    setting = config.train.activation_checkpointing
    if device is None:
        return None if setting == "auto" else setting == "on"
    if not config.fit_check:
        return setting == "on"
    if quick_bound(config, device, layers) <= device.usable:
        return setting == "on"
    off = config if setting != "auto" else _with(config, "train.activation_checkpointing", "off")
    found = estimate(off, device, layers, generative=generative, table=False)
    if found.fits:
        return setting == "on"
    if setting == "auto":
        on = estimate(_with(config, "train.activation_checkpointing", "on"), device, layers, generative=generative,
                      table=False)
        if on.fits:
            return True
        found = on
    raise DoesNotFit(does_not_fit_message(found))


def _with(config: RunConfig, key: str, value) -> RunConfig:
    from raylsl.config import with_overrides

    return with_overrides(config, {key: value})


def does_not_fit_message(found: Estimate) -> str:
    """One line: what the run needs, what the device leaves, and the cheapest change that fits."""
    terms = found.configured.terms
    parts = ", ".join(f"{name.replace('_', ' ')} {_gb(value)}" for name, value in terms.items() if value >= 0.05 * GIB)
    where = f"{found.device.name or found.device.kind} leaves {_gb(found.device.usable)} usable"
    blocks = "" if found.layers_known else " (before scoring, the selector's blocks are taken from block 0 up)"
    if found.suggestion is not None:
        fix = (f"it fits with {change_text(found.configured, found.suggestion)} "
               f"(estimated {_gb(found.suggestion.total)})")
    else:
        fix = ("no single change found fits: try more GPUs with deepspeed=zero3, a shorter data.max_length, a smaller "
               "lora.r or a smaller model")
    return (f"this run does not fit: it needs an estimated {_gb(found.configured.total)} per "
            f"{'GPU' if found.device.kind == 'cuda' else 'process'} ({parts}){blocks}, and {where}; {fix}. "
            f"`raylsl estimate` shows every option; fit_check=false skips this check")


def _gb(value: int) -> str:
    return f"{value / 10**9:.1f} GB"
