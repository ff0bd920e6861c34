"""Checkpoints: the peft adapter, the engine's optimizer state, the step, every rank's RNG state and
the callbacks' state.

`LocalCheckpoints` keeps them in ``RUN_DIR/checkpoints/step-000050/``: a directory appears only
once complete (written under a temporary name, then renamed), so the newest one can always be
resumed from. Ray Train runs use `raylsl.distributed` instead, which reports the same files to
Ray's storage.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

KEEP_LAST = 2


def write_checkpoint(directory: Path, step: int, engine, callbacks=(), rank: int = 0) -> None:
    """Writes one checkpoint's files into ``directory`` (collective: every rank calls it)."""
    directory.mkdir(parents=True, exist_ok=True)
    engine.save_adapter(directory / "adapter", rank)
    engine.save_state(directory, rank)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
               directory / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save({"step": step, "callbacks": [cb.state_dict() for cb in callbacks]}, directory / "trainer_state.pt")


def read_checkpoint(directory: Path, engine, callbacks=(), rank: int = 0) -> int:
    """Restores a checkpoint written by `write_checkpoint`; returns its step."""
    engine.load_adapter(directory / "adapter")
    engine.load_state(directory)
    state = torch.load(directory / "trainer_state.pt", weights_only=False)
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    rng_file = directory / f"rng-rank{rank}.pt"
    if rng_file.exists():  # a resume on fewer ranks than before still restores what it can
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
    return int(state["step"])


class LocalCheckpoints:
    """Checkpoints in the run directory of a single-process run."""

    def __init__(self, run_dir: Path):
        self.root = run_dir / "checkpoints"

    def list(self) -> list[Path]:
        return sorted(self.root.glob("step-*"))

    def save(self, step: int, engine, callbacks=(), metrics: dict | None = None) -> Path:
        final = self.root / f"step-{step:06d}"
        staging = self.root / f".tmp-step-{step:06d}"
        shutil.rmtree(staging, ignore_errors=True)
        write_checkpoint(staging, step, engine, callbacks)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        for old in self.list()[:-KEEP_LAST]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def restore(self, engine, callbacks=()) -> int:
        """Loads the newest checkpoint; returns its step (0 when there is none)."""
        found = self.list()
        return read_checkpoint(found[-1], engine, callbacks) if found else 0
