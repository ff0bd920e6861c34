"""DeepSpeed ZeRO as a training engine: the same loop, DeepSpeed's ``initialize`` done by us.

The plan carries the DeepSpeed config (a preset or the user's JSON, read on the driver); the loop's
batch and accumulation settings are written into it here, so the user's file needs only the ZeRO
section (and whatever else DeepSpeed should do). The worker sets ``DS_ACCELERATOR`` from its own
device before DeepSpeed is imported: cpu (gloo) or cuda (NCCL, bf16).

Under ZeRO-3 the model is built partitioned (`sharded_init`): transformers' ``from_pretrained`` and
``from_config`` run inside DeepSpeed's ``zero.Init`` while an ``HfDeepSpeedConfig`` is alive, so
each rank holds about 1/world of the base weights from the moment they load.

DeepSpeed's checkpoint engine reads its files with ``torch.load(weights_only=False)``, which runs
whatever code a tampered file holds; `DeepSpeedEngine.load_state` reads them weights-only instead,
allowing only the few DeepSpeed data classes its optimizer state holds (`deepspeed_safe_globals`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from raylsl.config import TrainSettings
from raylsl.fit import MIN_BUCKET
from raylsl.optim import build_optimizer


def sized_buckets(config: dict[str, Any], trainable: int) -> dict[str, Any]:
    """``config`` with ZeRO's gradient reduction bucket sized to what trains, unless the user set it.

    DeepSpeed allocates ``reduce_bucket_size`` elements (default 5e8) per GPU for gradient
    reduction under ZeRO 1-3: 1 GB in bf16 (2 GB in fp32 under ZeRO-1), for the few million
    parameters LoRA trains. A bucket of the trainable count holds every gradient at once.
    """
    zero = dict(config.get("zero_optimization", {}))
    if zero.get("stage", 0) < 1 or "reduce_bucket_size" in zero:
        return config
    zero["reduce_bucket_size"] = max(trainable, MIN_BUCKET)
    return {**config, "zero_optimization": zero}


def full_config(config: dict[str, Any], settings: TrainSettings, bf16: bool) -> dict[str, Any]:
    """The user's DeepSpeed config with the loop's batch, accumulation, clipping and precision."""
    config = {**config, "train_micro_batch_size_per_gpu": settings.batch_size,
              "gradient_accumulation_steps": settings.grad_accum,
              "gradient_clipping": settings.max_grad_norm, "zero_allow_untested_optimizer": True,
              "steps_per_print": 10**9}
    config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    if bf16:
        config["bf16"] = {"enabled": True}
    return config


_LIVE_CONFIGS: list = []


@contextmanager
def sharded_init(config: dict[str, Any]) -> Iterator[None]:
    """Models built inside are partitioned across the ranks as they load (ZeRO-3)."""
    from transformers.integrations import HfDeepSpeedConfig

    # transformers keeps only a weak reference: the object must outlive the training run.
    _LIVE_CONFIGS.append(HfDeepSpeedConfig(config))
    yield


def local_fraction(model: nn.Module) -> float:
    """The share of the model's parameters this rank holds (1.0 unless ZeRO-3 partitioned it)."""
    local = total = 0
    for param in model.parameters():
        total += getattr(param, "ds_numel", param.numel())
        local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
    return local / max(total, 1)


def deepspeed_safe_globals() -> list[type]:
    """The DeepSpeed classes a ZeRO checkpoint holds besides tensors and containers (its loss
    scaler, the ZeRO stage, fragment addresses): plain data, rebuilt without running code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_weights_only(path: str, map_location=None) -> Any:
    """A DeepSpeed checkpoint file, read with ``weights_only=True``."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


class DeepSpeedEngine:
    """Wraps ``deepspeed.initialize``; plain ``torch.optim.AdamW`` (no DeepSpeed op build)."""

    def __init__(self, model: nn.Module, settings: TrainSettings, config: dict[str, Any],
                 groups: list[dict] | None = None):
        """``config``: the `full_config`."""
        import deepspeed

        optimizer, scheduler = build_optimizer(model, settings, groups)
        config = sized_buckets(config, sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()
                                           if p.requires_grad))
        self.peft_model = model
        self.stage = int(config.get("zero_optimization", {}).get("stage", 0))
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
            model_parameters=[p for p in model.parameters() if p.requires_grad])

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        self.module.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        if not last_micro:
            self.module.step()  # advances DeepSpeed's micro-step counter; no optimizer step yet

    def step(self) -> None:
        self.module.step()  # the accumulation boundary: clip, optimizer and schedule step

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]  # not a group's lr: a dynamic selector zeroes some

    def save_state(self, path: Path, rank: int) -> None:
        # Collective: each rank writes its ZeRO partition of the optimizer state.
        self.module.save_checkpoint(str(path / "deepspeed"), tag="state", exclude_frozen_parameters=True)

    def load_state(self, path: Path) -> None:
        checkpoint_engine = self.module.checkpoint_engine
        checkpoint_engine.load = load_weights_only  # shadows the engine's own method for this load
        try:
            self.module.load_checkpoint(str(path / "deepspeed"), tag="state", load_module_strict=False)
        finally:
            del checkpoint_engine.load

    def save_adapter(self, path: Path, rank: int) -> None:
        """A standard peft adapter; under ZeRO-3 the partitioned LoRA weights are gathered first."""
        import deepspeed

        lora = [p for n, p in self.peft_model.named_parameters() if "lora_" in n or p.requires_grad]
        with deepspeed.zero.GatheredParameters(lora, modifier_rank=None, enabled=self.stage == 3):
            if rank == 0:
                self.peft_model.save_pretrained(path)

    def load_adapter(self, path: Path) -> None:
        """Nothing to do: `load_state` restores the trainable weights with the optimizer state."""
