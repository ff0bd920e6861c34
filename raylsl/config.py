"""Run configuration: frozen dataclasses loaded from YAML plus ``key=value`` overrides.

Every field is documented where it is declared. Unknown keys and out-of-range values raise
`ConfigError` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raylsl.errors import ConfigError

TRACKERS = ("none", "tensorboard", "mlflow")
TASK_FORMATS = ("auto", "mc", "completion", "alpaca", "chat", "text")
MODEL_DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "4bit", "8bit")
ATTENTION_KERNELS = ("auto", "sdpa", "flash_attention_2", "eager")
MODEL_KINDS = ("auto", "decoder", "encoder", "vlm")
MODEL_WEIGHTS = ("pretrained", "random")
CHECKPOINTING = ("off", "on", "auto")
STREAMING = ("auto", "on", "off")


@dataclass(frozen=True)
class ModelSettings:
    name: str = "smollm2-135m"
    """A named model (smollm2-135m, minilm-l6, tiny-llama, tiny-bert, or a shipped config such as
    llama-3.1-8b), a local directory or a hub name. A plain string is shorthand for model.name; a
    string override (``model=X``) changes the name and keeps the other model keys."""
    dtype: str = "auto"
    """Dtype the frozen base is loaded in (passed to ``from_pretrained``, never cast afterwards):
    auto (bfloat16 on a GPU that supports it unless train.precision=fp32, else float32), bfloat16,
    float16 or float32."""
    quantization: str = "none"
    """none, 4bit (QLoRA: NF4, double quantization, compute in the training dtype) or 8bit (LLM.int8),
    through bitsandbytes (``pip install 'raylsl[qlora]'``)."""
    attn_implementation: str = "auto"
    """Attention kernel: auto (flash_attention_2 when installed and usable here, else the model's
    default, sdpa where it has one), sdpa, flash_attention_2 or eager."""
    kind: str = "auto"
    """auto (from the model's config), decoder (causal LM), encoder (multiple-choice head) or vlm
    (a vision-language model: image-text-to-text class, loaded with its processor)."""
    weights: str = "pretrained"
    """pretrained, or random: the architecture from the model's config with seeded random weights
    (measures a model's cost without its weights; accuracies are then meaningless)."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "must name a model")
        _check(self.dtype in MODEL_DTYPES, "model.dtype", self.dtype, f"must be one of {', '.join(MODEL_DTYPES)}")
        _check(self.quantization in QUANTIZATIONS, "model.quantization", self.quantization,
               f"must be one of {', '.join(QUANTIZATIONS)}")
        _check(self.attn_implementation in ATTENTION_KERNELS, "model.attn_implementation", self.attn_implementation,
               f"must be one of {', '.join(ATTENTION_KERNELS)}")
        _check(self.kind in MODEL_KINDS, "model.kind", self.kind, f"must be one of {', '.join(MODEL_KINDS)}")
        _check(self.weights in MODEL_WEIGHTS, "model.weights", self.weights, f"must be one of {', '.join(MODEL_WEIGHTS)}")
        _check(self.quantization == "none" or self.dtype != "float32", "model.quantization", self.quantization,
               "computes in bfloat16 or float16: set model.dtype=bfloat16 (or auto on a GPU)")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA alpha; the adapter output is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] | None = None
    """Leaf names of the linear layers to adapt; None adapts every linear layer inside a block
    (nn.Linear or GPT-2's Conv1D, fused projections included, router gates not)."""
    target_parameters: tuple[str, ...] | None = None
    """Block-relative names of fused MoE expert weights to adapt too (mlp.experts.gate_up_proj),
    through peft's target_parameters; needs lora.dropout=0. None: experts stay frozen."""

    def __post_init__(self) -> None:
        _check(self.r > 0, "lora.r", self.r, "must be a positive integer (try lora.r=8)")
        _check(self.alpha > 0, "lora.alpha", self.alpha, "must be > 0")
        _check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "must be in [0, 1)")
        _check(self.target_modules is None or len(self.target_modules) > 0,
               "lora.target_modules", self.target_modules, "must name at least one module or be null")
        _check(not self.target_parameters or self.dropout == 0, "lora.dropout", self.dropout,
               "must be 0 with lora.target_parameters: peft's LoRA on a fused weight has no dropout")


@dataclass(frozen=True)
class DataSettings:
    test_size: int = 500
    """Examples held out for final evaluation (never seen by training or selection)."""
    val_size: int = 200
    """Examples held out of train for validation (selectors and tuning may use these)."""
    train_size: int | None = None
    """Cap on training examples after the split; None keeps all."""
    seed: int = 0
    """Seed of the train/validation/test split."""
    max_length: int = 128
    """Token budget per (context, choice) sequence; the context is truncated from the left."""

    def __post_init__(self) -> None:
        _check(self.test_size > 0, "data.test_size", self.test_size, "must be > 0")
        _check(self.val_size >= 0, "data.val_size", self.val_size, "must be >= 0")
        _check(self.train_size is None or self.train_size > 0, "data.train_size", self.train_size,
               "must be > 0 or null")
        _check(self.max_length >= 8, "data.max_length", self.max_length, "must be >= 8")


@dataclass(frozen=True)
class TaskSettings:
    name: str = "sarcasm"
    """A catalog name (sarcasm, quartz, socialiqa), a JSONL/CSV/Parquet path, or hf:DATASET[:CONFIG]."""
    context_field: str = "context"
    """Column holding the prompt (files and HF datasets)."""
    choices_field: str = "choices"
    """Column holding the list of answer strings."""
    label_field: str = "label"
    """Column holding the index of the correct answer."""
    image_field: str = "image"
    """Column holding a row's image or list of images (a path relative to the data file, or an HF
    dataset's image): a multiple-choice row's, or those of a chat row's image parts without a path."""
    split: str = "train"
    """Split to read from an HF dataset; raylsl makes its own train/validation/test from it."""
    format: str = "auto"
    """auto (from the first row's fields), mc (context/choices/label), completion
    (prompt/completion), alpaca (instruction/input/output), chat (messages) or text."""
    chat_template: str | None = None
    """A Jinja chat template for chat data (default: the tokenizer's own)."""
    answer_pattern: str | None = None
    """Generative tasks: a regex whose first group (or whole match) is the answer in a text. A row's
    reference is its ``answer`` field, else this pattern's match in its completion (default:
    GSM8K's ``#### 42``); a generated answer is this match (default: ``####``, else the last number)."""
    max_new_tokens: int = 128
    """Generative tasks with references: greedy generation stops after this many tokens..."""
    stop: tuple[str, ...] = ()
    """...or at end of sequence, or at the first of these strings."""

    def __post_init__(self) -> None:
        _check(self.format in TASK_FORMATS, "task.format", self.format, f"must be one of {', '.join(TASK_FORMATS)}")
        _check(self.max_new_tokens > 0, "task.max_new_tokens", self.max_new_tokens, "must be > 0")
        if self.answer_pattern is not None:
            import re

            try:
                re.compile(self.answer_pattern)
            except re.error as exc:
                raise ConfigError(f"task.answer_pattern={self.answer_pattern!r} is not a regular expression: {exc}") from None


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 16
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate (AdamW), reached after warmup, then cosine decay to 0."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    seed: int = 0
    """Seed for adapter init, data order and dropout."""
    precision: str = "auto"
    """auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16."""
    checkpoint_every: int = 50
    """Save adapter + optimizer state every N steps (0: only at the end)."""
    eval_batch_size: int = 32
    """Examples per evaluation batch."""
    eval_every: int = 0
    """Evaluate on the validation split every N steps during training (0: only after training);
    the values go to ``metrics.jsonl`` (``val_*``), tracking, and a sweep trial's Tune results."""
    eval_subset: int = 0
    """Examples in each evaluation during training: the first N of the validation split, the same
    for every run (0: all of it)."""
    activation_checkpointing: str = "off"
    """Recompute block activations in backward instead of keeping them: off, on (every block from
    the lowest one that can train up; blocks below it keep nothing anyway), or auto (on when the fit
    check says the run does not fit without it)."""
    loss_chunk: int = 0
    """Target positions per chunk of the LM head and loss (each chunk's logits are recomputed in
    backward, so peak memory no longer grows with vocabulary x target tokens); 0: all at once."""

    def __post_init__(self) -> None:
        _check(self.steps > 0, "train.steps", self.steps, "must be > 0")
        _check(self.eval_every >= 0, "train.eval_every", self.eval_every, "must be >= 0")
        _check(self.eval_subset >= 0, "train.eval_subset", self.eval_subset, "must be >= 0")
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "must be > 0")
        _check(self.grad_accum > 0, "train.grad_accum", self.grad_accum, "must be > 0")
        _check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        _check(0 <= self.warmup_steps, "train.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision", self.precision,
               "must be auto, fp32 or bf16")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every,
               "must be >= 0")
        _check(self.activation_checkpointing in CHECKPOINTING, "train.activation_checkpointing",
               self.activation_checkpointing, f"must be one of {', '.join(CHECKPOINTING)}")
        _check(self.loss_chunk >= 0, "train.loss_chunk", self.loss_chunk, "must be >= 0 (0: no chunking)")


@dataclass(frozen=True)
class CalibrationSettings:
    size: int = 128
    """Calibration examples for static selectors, drawn from the train split."""
    seed: int = 0
    """Seed of the calibration draw."""
    batch_size: int = 16
    """Examples per scoring forward pass."""
    stream: str = "auto"
    """Score one block at a time (CKA, activation: peak memory one block plus the calibration
    activations, at any model size): on, off, or auto (on when the model's weights do not fit the
    scoring device). Both paths give the same scores, so it is not part of the score cache's key."""

    def __post_init__(self) -> None:
        _check(self.size > 0, "calibration.size", self.size, "must be > 0")
        _check(self.batch_size > 0, "calibration.batch_size", self.batch_size, "must be > 0")
        _check(self.stream in STREAMING, "calibration.stream", self.stream, f"must be one of {', '.join(STREAMING)}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    """The base model and how it is loaded; a plain string is shorthand for model.name."""
    task: TaskSettings = field(default_factory=TaskSettings)
    """The task; a plain string is shorthand for task.name."""
    layers: str = "all"
    """Blocks that get adapters: all, a range 15-29, a list 0,3,7 (ranges may mix: 0-3,10)."""
    selector: str | None = None
    """Selector that chooses the blocks (see `raylsl.selectors.available_selectors()`); None uses layers."""
    n: int | float | None = None
    """Selector budget: a block count (15) or a fraction of the blocks (0.5)."""
    threshold: float | None = None
    """Alternative budget: keep blocks whose score is >= threshold."""
    mass: float | None = None
    """Alternative budget: the fewest top blocks whose normalized scores sum to >= mass."""
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    selector_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-selector options, written in YAML as a section named after the selector (cka: {pooling: mean})."""
    blocks_path: str | None = None
    """Dotted path of the block ModuleList (e.g. model.layers) when discovery cannot find it."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    workers: int = 0
    """0 trains in this process; N >= 1 trains in N Ray Train workers (DDP, or DeepSpeed below)."""
    deepspeed: str | None = None
    """DeepSpeed ZeRO in the Ray workers: zero0, zero1, zero2, zero3 or a DeepSpeed JSON file."""
    max_failures: int = 0
    """Ray Train restarts a failed worker group this many times, from the newest checkpoint."""
    gpus_per_worker: float | str = "auto"
    """GPUs each Ray Train worker asks for; auto: 1 when the cluster has GPUs (or its autoscaler can
    start GPU nodes), else 0. Set it explicitly on an autoscaling cluster whose GPU nodes are down."""
    cpus_per_worker: float = 1.0
    """CPUs each Ray Train worker asks for."""
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each worker asks for (custom node labels, e.g. {accelerator_type:A10G: 0.01})."""
    gpu_memory: str | None = None
    """Memory of each GPU the run trains on (80GB, 24GiB), for the fit check; None: the local GPU's
    when this process trains, else every Ray worker checks against its own GPU before loading."""
    fit_check: bool = True
    """Estimate the run's memory before anything loads (`raylsl estimate` prints the estimate) and
    refuse a run that cannot fit, naming the cheapest change that makes it fit; false skips it."""
    storage: str | None = None
    """Where the run lives durably: a local path, an NFS mount, s3://bucket/prefix or gs://bucket/prefix.
    None keeps it in output_dir. Ray workers on other nodes write to and read from it."""
    output_dir: str = "runs"
    """Directory under which each run gets its own folder (on the machine that starts the run)."""
    name: str | None = None
    """Run folder name; None derives one from model, task, layers and time."""
    eval_before: bool = True
    """Evaluate the base model on the test split before training."""
    eval_split: str = "test"
    """Split the trained adapter is evaluated on: test, or validation (sweep trials never see test)."""
    tracking: str = "none"
    """none, tensorboard or mlflow: the run's scalars, evaluations and chosen blocks (rank 0 logs);
    in a sweep, every trial's reports (`raylsl.tracking`)."""
    tracking_uri: str | None = None
    """Where tracking writes: a directory (tensorboard) or an MLflow tracking URI (``http://...``,
    ``sqlite:///...``). None: inside the run or sweep directory (with Ray Train workers, the records
    come back in the final checkpoint; a location given here must be one rank 0's node reaches)."""
    score_cache: bool = True
    """Read and write the block-score cache (``~/.cache/raylsl/scores``); false (``--no-cache``)
    computes the scores afresh and leaves the cache alone."""

    def __post_init__(self) -> None:
        if self.selector is not None and self.layers != "all":
            raise ConfigError(f"give either layers={self.layers} or selector={self.selector}, not both")
        _check(self.workers >= 0, "workers", self.workers, "must be >= 0 (0 trains in this process)")
        _check(self.max_failures >= 0, "max_failures", self.max_failures, "must be >= 0")
        _check(self.eval_split in ("test", "validation"), "eval_split", self.eval_split, "must be test or validation")
        _check(self.tracking in TRACKERS, "tracking", self.tracking, f"must be {', '.join(TRACKERS[:-1])} or {TRACKERS[-1]}")
        _check(self.deepspeed is None or self.workers > 0, "deepspeed", self.deepspeed,
               "runs in Ray Train workers: set workers=1 or more")
        _check(self.gpus_per_worker == "auto" or (not isinstance(self.gpus_per_worker, str) and self.gpus_per_worker >= 0),
               "gpus_per_worker", self.gpus_per_worker, "must be auto or a number >= 0")
        _check(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        if self.gpu_memory is not None:
            parse_memory(self.gpu_memory, "gpu_memory")
        for key, amount in self.worker_resources.items():
            _check(isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0,
                   f"worker_resources.{key}", amount, "must be a number > 0")
        unknown = sorted(set(self.selector_options) - set(OPTION_SECTIONS))
        if unknown:
            raise ConfigError(f"selector_options: '{unknown[0]}' is not a selector; known: {', '.join(sorted(OPTION_SECTIONS))}")

    def to_dict(self) -> dict[str, Any]:
        plain = _to_plain(dataclasses.asdict(self))
        return {**{k: v for k, v in plain.items() if k != "selector_options"}, **plain["selector_options"]}


OPTION_SECTIONS: dict[str, type] = {}
"""Option dataclasses by selector name: a top-level YAML section named after a selector holds its
options (``cka: {pooling: mean}``). Filled by `raylsl.selectors.register_selector`."""


def register_option_section(name: str, config_cls: type) -> None:
    """Makes ``name: {...}`` (and ``name.key=value``) a valid section of a run config."""
    OPTION_SECTIONS[name] = config_cls


# Overrides applied by ``--smoke``: a few steps on a few examples, end to end.
SMOKE_OVERRIDES = {
    "train.steps": 4,
    "train.batch_size": 4,
    "train.warmup_steps": 1,
    "train.checkpoint_every": 2,
    "train.eval_batch_size": 8,
    "data.test_size": 16,
    "data.val_size": 8,
    "data.train_size": 64,
}


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Builds a `RunConfig` from an optional YAML file and overrides.

    Args:
        path: YAML file; None starts from the defaults.
        overrides: ``["lora.r=4", "layers=15-29"]`` (values parsed as YAML scalars) or a
            dict of dotted keys to values; applied after the file.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of keys to values at the top level")
    return _apply(raw, overrides, source, "the command-line overrides")


def with_overrides(config: RunConfig, overrides: dict[str, Any], source: str = "the overrides") -> RunConfig:
    """``config`` with dotted-key ``overrides`` applied (checked as `load_config` checks them)."""
    return _apply(config.to_dict(), overrides, "a run config", source)


def _apply(raw: dict[str, Any], overrides: list[str] | dict | None, source: str, overrides_source: str) -> RunConfig:
    parsed = parse_overrides(overrides)
    if parsed:
        only_overrides: dict[str, Any] = {}
        for key, value in parsed.items():
            _set_dotted(only_overrides, key, value)
        _run_config(only_overrides, source=overrides_source)  # names the culprit
        source += " + overrides"
    for key, value in parsed.items():
        _set_dotted(raw, key, value)
    return _run_config(raw, source)


def _run_config(raw: dict[str, Any], source: str) -> RunConfig:
    """`from_dict` for RunConfig, with sections named after a selector gathered as its options
    (each checked against the selector's option dataclass)."""
    raw = dict(raw)
    options = {name: raw.pop(name) for name in OPTION_SECTIONS if name in raw}
    for name, value in options.items():
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' in {source} must be a mapping of {name}'s options")
        from_dict(OPTION_SECTIONS[name], value, source=source, prefix=f"{name}.")
    config = from_dict(RunConfig, raw, source=source)
    return dataclasses.replace(config, selector_options=options) if options else config


def from_dict(cls: type, raw: dict[str, Any], source: str = "config", prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a nested dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"unknown key '{key}' in {source}; valid keys here: {', '.join(sorted(names))}")
    kwargs = {name: _coerce(hints[name], value, source, prefix + name) for name, value in raw.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, str) and hint in SHORTHAND.values():
            return hint(name=value)
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {source} must be a mapping, got {value!r}")
        return from_dict(hint, value, source, prefix=key + ".")
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if set(inner) == {int, float}:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            raise ConfigError(f"'{key}' in {source} must be a number, got {value!r}")
        if set(inner) == {float, str}:  # a number or a keyword such as auto
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return value
            raise ConfigError(f"'{key}' in {source} must be a number or a word such as auto, got {value!r}")
        return _coerce(inner[0], value, source, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' in {source} must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"'{key}' in {source} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, source, key) for v in items)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 2e-4 (no dot) as a string
        except ValueError:
            pass
    if hint is str and isinstance(value, bool) and key in ON_OFF:
        return "on" if value else "off"  # YAML reads a bare on/off as a boolean
    if hint is str and isinstance(value, (int, list)) and not isinstance(value, bool):
        # `layers: 5` or `layers: [0, 3]` in YAML mean the same as the string forms.
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"'{key}' in {source} must be {hint.__name__}, got {value!r}")
    return value


def parse_overrides(overrides: list[str] | dict | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. lora.r=16)")
        try:
            parsed[key.strip()] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            parsed[key.strip()] = text
    return parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if isinstance(child, str) and part in SHORTHAND:
            child = {"name": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is not a section")
        node[part] = child
        node = child
    if leaf == "model" and not parents and isinstance(value, str) and isinstance(node.get(leaf), dict):
        value = {**node[leaf], "name": value}  # another model, loaded the same way
    node[leaf] = value


def parse_memory(text: str | float, key: str = "gpu_memory") -> int:
    """Bytes in a memory size: ``80GB``, ``80 GiB``, ``24000MB``, or a plain number of GB.

    Raises:
        ConfigError: naming ``key`` when the text is not a positive size.
    """
    import re

    units = {"": 10**9, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
             "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found[2].lower() if found else ""
    if found is None or unit not in units or float(found[1]) <= 0:
        raise ConfigError(f"{key}={text!r} is not a memory size; write it like 80GB, 24GiB or 16000MB")
    return int(float(found[1]) * units[unit])


DEEPSPEED_PRESETS = {f"zero{stage}": {"zero_optimization": {"stage": stage}} for stage in range(4)}


def deepspeed_config(spec: str) -> dict[str, Any]:
    """The DeepSpeed config for a preset name (zero0-3) or a JSON file path, read here.

    Raises:
        ConfigError: neither a preset nor a readable JSON file.
    """
    if spec in DEEPSPEED_PRESETS:
        return json.loads(json.dumps(DEEPSPEED_PRESETS[spec]))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"deepspeed={spec!r}: use one of {', '.join(DEEPSPEED_PRESETS)} or a path to a DeepSpeed JSON config")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deepspeed config {path} is not valid JSON: {exc}") from None


SHORTHAND = {"task": TaskSettings, "model": ModelSettings}
"""Sections a plain string stands for: the string is the section's ``name``."""
ON_OFF = {"train.activation_checkpointing", "calibration.stream"}
"""Keys whose values include on and off (which YAML reads as booleans)."""


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj
