"""DeepSpeed ZeRO as a training engine: the same loop, DeepSpeed's ``initialize`` done by us.

Stages 0-3 by name (``zero0`` ... ``zero3``) or a DeepSpeed JSON file. The loop's batch and
accumulation settings are written into the DeepSpeed config, so the config file needs only the
ZeRO section (and whatever else DeepSpeed should do). On CPU DeepSpeed must be imported with
``DS_ACCELERATOR=cpu`` (the Ray runtime env sets it); on GPU it runs with NCCL and bf16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raylsl.config import TrainSettings
from raylsl.errors import ConfigError
from raylsl.training.engine import build_optimizer

PRESETS = {f"zero{stage}": {"zero_optimization": {"stage": stage}} for stage in range(4)}


def deepspeed_config(spec: str) -> dict[str, Any]:
    """The DeepSpeed config for a preset name or a JSON file path.

    Raises:
        ConfigError: neither a preset nor a readable JSON file.
    """
    if spec in PRESETS:
        return json.loads(json.dumps(PRESETS[spec]))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"deepspeed={spec!r}: use one of {', '.join(PRESETS)} or a path to a DeepSpeed JSON config")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deepspeed config {path} is not valid JSON: {exc}") from None


class DeepSpeedEngine:
    """Wraps ``deepspeed.initialize``; plain ``torch.optim.AdamW`` (no DeepSpeed op build)."""

    def __init__(self, model: nn.Module, settings: TrainSettings, config: dict[str, Any], bf16: bool,
                 groups: list[dict] | None = None):
        import deepspeed

        optimizer, scheduler = build_optimizer(model, settings, groups)
        config = {**config, "train_micro_batch_size_per_gpu": settings.batch_size,
                  "gradient_accumulation_steps": settings.grad_accum,
                  "gradient_clipping": settings.max_grad_norm, "zero_allow_untested_optimizer": True,
                  "steps_per_print": 10**9}
        config.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
        if bf16:
            config["bf16"] = {"enabled": True}
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
        self.module.load_checkpoint(str(path / "deepspeed"), tag="state", load_module_strict=False)

    def save_adapter(self, path: Path, rank: int) -> None:
        """A standard peft adapter; under ZeRO-3 the partitioned LoRA weights are gathered first."""
        import deepspeed

        lora = [p for n, p in self.peft_model.named_parameters() if "lora_" in n or p.requires_grad]
        with deepspeed.zero.GatheredParameters(lora, modifier_rank=None, enabled=self.stage == 3):
            if rank == 0:
                self.peft_model.save_pretrained(path)

    def load_adapter(self, path: Path) -> None:
        """Nothing to do: `load_state` restores the trainable weights with the optimizer state."""
