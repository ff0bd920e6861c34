"""Checkpoints: the peft adapter, the engine's optimizer state, the step, every rank's RNG state,
the callbacks' state, what the run computed once (``extra``: the evaluation before training) and
the metrics log so far.

Everything is written with ``torch.save`` of tensors, numbers, strings, lists and dicts, and read
back with ``torch.load(weights_only=True)``: a checkpoint from shared storage cannot run code.
(DeepSpeed's own optimizer-state files are read by DeepSpeed.)

`LocalCheckpoints` keeps them in ``RUN_DIR/checkpoints/step-000050/``; a directory appears only once
complete (written under a temporary name, then renamed), so the newest one can always be resumed
from; with remote storage each new checkpoint is copied there too. Ray Train runs report the same
files to Ray's storage instead (`raylsl.distributed.ray_train`).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

KEEP_LAST = 2
METRICS = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain values (no pickled objects)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_checkpoint(directory: Path, step: int, engine, callbacks=(), rank: int = 0, extra: dict | None = None,
                     records: Path | None = None) -> None:
    """Writes one checkpoint's files into ``directory`` (collective: every rank calls it).

    Args:
        extra: values the run computed once and must not recompute on resume (rank 0's).
        records: the run's record directory; its ``metrics.jsonl`` is copied in (rank 0).
    """
    directory.mkdir(parents=True, exist_ok=True)
    engine.save_adapter(directory / "adapter", rank)
    engine.save_state(directory, rank)
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save({"step": step, "callbacks": [cb.state_dict() for cb in callbacks], "extra": extra or {}},
                   directory / "trainer_state.pt")
        if records is not None and (records / METRICS).is_file():
            shutil.copyfile(records / METRICS, directory / METRICS)


def read_checkpoint(directory: Path, engine, callbacks=(), rank: int = 0, records: Path | None = None) -> int:
    """Restores a checkpoint written by `write_checkpoint`; returns its step. Rank 0 puts the
    checkpoint's metrics log back into ``records`` (a worker on a new node starts without it)."""
    engine.load_adapter(directory / "adapter")
    engine.load_state(directory)
    state = read_trainer_state(directory)
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    rng_file = directory / f"rng-rank{rank}.pt"
    if rng_file.exists():  # a resume on fewer ranks than before still restores what it can
        set_rng_state(torch.load(rng_file, weights_only=True))
    if records is not None and rank == 0 and (directory / METRICS).is_file():
        records.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(directory / METRICS, records / METRICS)
    return int(state["step"])


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "trainer_state.pt", weights_only=True)


class LocalCheckpoints:
    """Checkpoints in the run directory of a single-process run, copied to the run's storage when
    that is elsewhere (``mirror``: a `raylsl.storage.RunDir`)."""

    def __init__(self, run_dir: Path, mirror=None):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.mirror = mirror

    def list(self) -> list[Path]:
        return sorted(self.root.glob("step-*"))

    def peek(self) -> dict[str, Any] | None:
        """The newest checkpoint's ``extra`` values, without restoring anything."""
        found = self.list()
        return read_trainer_state(found[-1])["extra"] if found else None

    def save(self, step: int, engine, callbacks=(), extra: dict | None = None, metrics: dict | None = None) -> Path:
        final = self.root / f"step-{step:06d}"
        staging = self.root / f".tmp-step-{step:06d}"
        shutil.rmtree(staging, ignore_errors=True)
        write_checkpoint(staging, step, engine, callbacks, extra=extra, records=self.run_dir)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        pruned = self.list()[:-KEEP_LAST]
        for old in pruned:
            shutil.rmtree(old, ignore_errors=True)
        if self.mirror is not None and self.mirror.shared:
            self.mirror.sync(f"checkpoints/{final.name}", METRICS)
            for old in pruned:
                self.mirror.storage.delete(f"checkpoints/{old.name}")
        return final

    def report(self, metrics: dict[str, Any]) -> None:
        """Intermediate results go nowhere but ``metrics.jsonl`` in a local run."""

    def restore(self, engine, callbacks=()) -> int:
        """Loads the newest checkpoint; returns its step (0 when there is none)."""
        found = self.list()
        return read_checkpoint(found[-1], engine, callbacks) if found else 0
