"""Checkpoints: the peft adapter plus optimizer, scheduler, RNG state and step, written atomically.

Layout: ``RUN_DIR/checkpoints/step-000050/{adapter/, trainer_state.pt}``. A checkpoint directory
appears only once complete (written under a temporary name, then renamed), so the newest one can
always be resumed from.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

KEEP_LAST = 2


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer, scheduler, callbacks=()) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    staging = root / f".tmp-step-{step:06d}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging / "adapter")
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "callbacks": [cb.state_dict() for cb in callbacks],
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }, staging / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in list_checkpoints(run_dir)[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*"))


def restore_latest(run_dir: Path, model: nn.Module, optimizer, scheduler, callbacks=()) -> int:
    """Loads the newest checkpoint into ``model``/``optimizer``/``scheduler``; returns its step (0: none)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    found = list_checkpoints(run_dir)
    if not found:
        return 0
    latest = found[-1]
    set_peft_model_state_dict(model, load_file(latest / "adapter" / "adapter_model.safetensors"))
    state = torch.load(latest / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    return int(state["step"])
