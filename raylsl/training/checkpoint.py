"""Checkpoints: the peft adapter, the engine's optimizer state, the step, every rank's RNG state,
the callbacks' state, what the run computed once (``extra``: the evaluation before training), the
metrics log so far and the tracking records (TensorBoard events, the MLflow store).

Everything is written with ``torch.save`` of tensors, numbers, strings, lists and dicts, and read
back with ``torch.load(weights_only=True)``: a checkpoint from shared storage cannot run code.
(DeepSpeed's own optimizer-state files are read weights-only too: `raylsl.distributed.deepspeed_engine`.)

`LocalCheckpoints` keeps them in ``RUN_DIR/checkpoints/step-000050/``. A checkpoint counts only once
its completion marker (``COMPLETE.json``, listing every other file and its size) is in place: the
files are written under a temporary name, fsynced, sealed by the marker and renamed into place;
with remote storage each new checkpoint is copied there too, file by file, the marker last. An
upload cut off half way therefore leaves a copy without a marker, which nothing reads. A resume
takes the newest complete checkpoint of the run directory and the storage together, and an older
one when the newest cannot be read. Ray Train runs report the same files to Ray's storage instead
(`raylsl.distributed.ray_train`), where Ray records a checkpoint only once every rank's upload ended.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError

from raylsl.errors import StateError
from raylsl.storage import Storage, StorageError, fsync_dir, fsync_tree
from raylsl.tracking import RECORD_DIRS

KEEP_LAST = 2
METRICS = "metrics.jsonl"
COMPLETE = "COMPLETE.json"
"""A checkpoint's completion marker, written last: every other file of it, with its size."""
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError)
"""What reading a damaged checkpoint raises (a missing file, a truncated zip or safetensors file)."""


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
        records: the run's record directory; its ``metrics.jsonl`` and tracking records are
            copied in (rank 0).
    """
    directory.mkdir(parents=True, exist_ok=True)
    engine.save_adapter(directory / "adapter", rank)
    engine.save_state(directory, rank)
    torch.save(rng_state(), directory / f"rng-rank{rank}.pt")
    if rank == 0:
        torch.save({"step": step, "callbacks": [cb.state_dict() for cb in callbacks], "extra": extra or {}},
                   directory / "trainer_state.pt")
        if records is not None:
            if (records / METRICS).is_file():
                shutil.copyfile(records / METRICS, directory / METRICS)
            for name in RECORD_DIRS:
                if (records / name).is_dir():
                    shutil.copytree(records / name, directory / name)


def read_checkpoint(directory: Path, engine, callbacks=(), rank: int = 0, records: Path | None = None) -> int:
    """Restores a checkpoint written by `write_checkpoint`; returns its step. Rank 0 puts the
    checkpoint's metrics log back into ``records``, and its tracking records where ``records`` has
    none (a restarted Ray Train worker, a run resumed on another machine): a run directory that
    still has its own keeps them, since a tracker may hold them open."""
    engine.load_adapter(directory / "adapter")
    engine.load_state(directory)
    state = read_trainer_state(directory)
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    rng_file = directory / f"rng-rank{rank}.pt"
    if rng_file.exists():  # a resume on fewer ranks than before still restores what it can
        set_rng_state(torch.load(rng_file, weights_only=True))
    if records is not None and rank == 0:
        records.mkdir(parents=True, exist_ok=True)
        if (directory / METRICS).is_file():
            shutil.copyfile(directory / METRICS, records / METRICS)
        for name in RECORD_DIRS:
            if (directory / name).is_dir() and not (records / name).exists():
                shutil.copytree(directory / name, records / name)
    return int(state["step"])


def read_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / "trainer_state.pt", weights_only=True)


def seal(directory: Path) -> None:
    """Marks a fully written checkpoint complete: its files are fsynced, then the marker listing
    them is written (and fsynced) last."""
    fsync_tree(directory)
    files = {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}
    Storage(directory).write_json(COMPLETE, {"files": files})


def is_complete(storage: Storage, rel: str) -> bool:
    """True when checkpoint ``rel`` of ``storage`` has its marker and every file the marker lists,
    at the listed size (a copy cut off half way has no marker, or misses files)."""
    try:
        listed = json.loads(storage.read_bytes(f"{rel}/{COMPLETE}"))["files"]
    except (StorageError, ValueError, KeyError, TypeError):
        return False
    found = storage.sizes(rel)
    return isinstance(listed, dict) and all(found.get(name) == size for name, size in listed.items())


class LocalCheckpoints:
    """Checkpoints in the run directory of a single-process run, copied to the run's storage when
    that is elsewhere (``mirror``: a `raylsl.storage.RunDir`)."""

    def __init__(self, run_dir: Path, mirror=None):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.mirror = mirror if mirror is not None and mirror.shared else None

    def list(self) -> list[Path]:
        """The complete checkpoints in the run directory, oldest first."""
        here = Storage(self.root)
        return [p for p in sorted(self.root.glob("step-*")) if is_complete(here, p.name)]

    def peek(self) -> dict[str, Any] | None:
        """The newest readable checkpoint's ``extra`` values, without restoring anything."""
        for directory in self._newest_first():
            try:
                return read_trainer_state(directory)["extra"]
            except UNREADABLE:
                continue
        return None

    def save(self, step: int, engine, callbacks=(), extra: dict | None = None, metrics: dict | None = None) -> Path:
        final = self.root / f"step-{step:06d}"
        staging = self.root / f".tmp-step-{step:06d}"
        shutil.rmtree(staging, ignore_errors=True)
        write_checkpoint(staging, step, engine, callbacks, extra=extra, records=self.run_dir)
        seal(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        fsync_dir(self.root)
        kept = self.list()
        for old in kept[:-KEEP_LAST]:
            shutil.rmtree(old, ignore_errors=True)
        if self.mirror is not None:
            self._upload(final, {p.name for p in kept[-KEEP_LAST:]})
        return final

    def _upload(self, final: Path, kept: set[str]) -> None:
        """Copies checkpoint ``final`` to storage, its marker last, then removes the stored
        checkpoints this run directory no longer keeps (only now: until the new one is complete
        there, the older ones are what a resume from storage has)."""
        storage, rel = self.mirror.storage, f"checkpoints/{final.name}"
        storage.delete(rel)  # a torn copy an interrupted upload left
        for path in sorted(final.rglob("*")):
            if path.is_file() and path.name != COMPLETE:
                storage.write_bytes(f"{rel}/{path.relative_to(final).as_posix()}", path.read_bytes())
        storage.write_bytes(f"{rel}/{COMPLETE}", (final / COMPLETE).read_bytes())
        self.mirror.sync(METRICS)
        for name in storage.listdir("checkpoints"):
            if name.startswith("step-") and name not in kept:
                storage.delete(f"checkpoints/{name}")

    def report(self, metrics: dict[str, Any]) -> None:
        """Intermediate results go nowhere but ``metrics.jsonl`` in a local run."""

    def restore(self, engine, callbacks=()) -> int:
        """Loads the newest checkpoint that can be read; returns its step (0 when there is none).

        Raises:
            StateError: there are complete checkpoints, but none can be read.
        """
        failures = []
        for directory in self._newest_first():
            try:
                return read_checkpoint(directory, engine, callbacks, records=self.run_dir)
            except UNREADABLE as exc:
                failures.append(f"{directory.name}: {type(exc).__name__}: {exc}".splitlines()[0])
                print(f"raylsl: checkpoint {directory} cannot be read ({failures[-1]}); trying an older one",
                      file=sys.stderr, flush=True)
        if failures:
            raise StateError(f"no checkpoint of {self.run_dir} can be read ({'; '.join(failures)}); start the run "
                             f"again under a new name")
        return 0

    def _newest_first(self) -> Iterator[Path]:
        """The complete checkpoints of the run directory and of its storage together, newest first;
        one that only storage has (another machine's progress) is downloaded when reached. No
        complete local checkpoint is deleted or replaced: storage may be behind."""
        local = {p.name: p for p in self.list()}
        stored = set()
        if self.mirror is not None:
            storage = self.mirror.storage
            stored = {name for name in storage.listdir("checkpoints")
                      if name.startswith("step-") and name not in local and is_complete(storage, f"checkpoints/{name}")}
        for name in sorted(set(local) | stored, reverse=True):
            if name in local:
                yield local[name]
                continue
            target = self.mirror.storage.download(f"checkpoints/{name}", self.root / name)
            if is_complete(Storage(self.root), name):  # storage may have changed since it was listed
                yield target
            else:
                shutil.rmtree(target)
