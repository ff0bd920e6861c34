"""Plan -> a model ready to train: the one place where a single-process run and a Ray Train
worker put LoRA on the plan's blocks and build the objective and a dynamic selector's callback.

What depends on the machine is decided here, by the process that trains: the device it was given,
and from it the dtype, quantization and attention kernel the base is loaded with
(`raylsl.models.loading`: bf16 on a GPU under ``model.dtype=auto``, straight from the checkpoint,
never an fp32 copy cast afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raylsl.callbacks import Callback
from raylsl.lora import apply_lora
from raylsl.models import find_blocks
from raylsl.models.checkpointing import checkpoint_blocks
from raylsl.objective import Objective, run_objective
from raylsl.plan import Plan, load_base
from raylsl.selectors import TrainingContext, build_selector


@dataclass
class Assembled:
    plan: Plan
    model: nn.Module
    """The peft model (adapters on the plan's blocks), on ``device``."""
    tokenizer: Any
    objective: Objective
    dynamic: Callback | None
    """A dynamic selector's training-loop callback (IST, LISA), None for static selections."""
    device: torch.device
    checkpointed: list[int] = field(default_factory=list)
    """Blocks whose activations are recomputed in backward (`raylsl.models.checkpointing`)."""


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assemble(plan: Plan, device: torch.device, loaded: tuple[nn.Module, Any] | None = None,
             checkpointing: bool | None = None) -> Assembled:
    """LoRA on the plan's blocks (seeded, so every rank starts identical), activation checkpointing
    from the lowest of them up when it is on, the objective, and a dynamic selector's callback.

    Args:
        loaded: ``(model, tokenizer)`` already loaded (by the driver that scored the blocks, or by
            a worker under ZeRO-3's partitioned init); else the plan's model source is loaded.
        checkpointing: overrides the plan's (a worker that resolved ``auto`` against its device).
    """
    config = plan.config
    model, tokenizer = loaded or load_base(plan.model.spec(plan.kind), config, device)
    seed_everything(config.train.seed)
    blocks = find_blocks(model, plan.blocks_path)[1]
    peft_model = apply_lora(model, list(plan.layers), config.lora, plan.blocks_path, blocks, plan.kind)
    checkpointed = checkpoint_blocks(blocks, min(plan.layers)) if (
        plan.checkpointing if checkpointing is None else checkpointing) else []
    objective = run_objective(plan.kind, tokenizer, config, plan.task.generative)
    dynamic = None
    if config.selector is not None:
        selector = build_selector(config.selector, config.selector_options.get(config.selector))
        dynamic = selector.training_callback(TrainingContext(peft_model, plan.blocks_path, plan.num_blocks, objective,
                                                             plan.task.validation, config.train.seed))
    return Assembled(plan, peft_model, tokenizer, objective, dynamic, device, checkpointed)


def assemble_here(config, name: str = "run") -> Assembled:
    """Plans ``config`` and assembles it in this process, on this machine's accelerator (what a
    single-process run trains; benchmarks and tests use it to get a ready model)."""
    from raylsl.plan import build_plan, local_device

    plan, loaded = build_plan(config, name, storage="", keep_model=True)
    return assemble(plan, local_device(), loaded)
