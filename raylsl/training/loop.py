"""The one training loop: every path (single process now, Ray Train workers later) runs this.

Per step: callbacks ``on_step_start`` -> ``grad_accum`` micro-batches (forward, loss, backward) ->
``on_before_optimizer_step`` -> clip, AdamW, warmup+cosine schedule -> metrics line ->
``on_step_end`` -> checkpoint every ``checkpoint_every`` steps. Dynamic selectors (IST, Flexora)
act through the callbacks; the loop's shape does not change for them.

Data order is a pure function of (seed, step), so a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would have.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from raylsl.callbacks import Callback, LoopState
from raylsl.config import TrainSettings
from raylsl.data import micro_batches
from raylsl.objective import Objective, to_device
from raylsl.training.checkpoint import LocalCheckpoints
from raylsl.training.costs import StepCosts, batch_tokens
from raylsl.training.engine import TorchEngine


def autocast_for(settings: TrainSettings, device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU under ``precision=auto``, or wherever ``precision=bf16``; else off."""
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def train_loop(model: nn.Module, objective: Objective, examples: list, settings: TrainSettings,
               run_dir: Path, callbacks: tuple[Callback, ...] = (), progress: bool = True, engine=None,
               checkpoints=None, rank: int = 0, world: int = 1, extra: dict | None = None) -> dict[str, Any]:
    """Trains ``model``'s trainable parameters, resuming from the newest checkpoint.

    Args:
        model: the peft model.
        run_dir: where rank 0 writes ``metrics.jsonl`` (and callbacks their records).
        engine: how to update it (default: a `TorchEngine` in this process).
        checkpoints: where checkpoints go (default: `LocalCheckpoints` in ``run_dir``).
        rank, world: this worker's data-parallel rank and the number of workers; only rank 0
            writes ``metrics.jsonl`` and shows progress.
        extra: values saved in every checkpoint (what the run computed once, for its resume).

    Returns:
        ``{"steps", "resumed_from", "final_loss", "train_time_s", "peak_memory_mb", "costs"}``;
        ``costs``: `raylsl.training.costs.StepCosts.summary` (peak memory the maximum over ranks).
        Callbacks see the running costs as ``state.costs``.
    """
    device = next(model.parameters()).device
    engine = engine or TorchEngine(model, settings)
    checkpoints = checkpoints or LocalCheckpoints(run_dir)
    state = LoopState(model, getattr(engine, "optimizer", None), settings, run_dir)
    state.step = resumed = checkpoints.restore(engine, callbacks)
    log = _MetricsLog(run_dir / "metrics.jsonl", resumed) if rank == 0 else None
    autocast = autocast_for(settings, device)
    engine.module.train()
    for cb in callbacks:
        cb.on_train_start(state)
    reset_peak_memory(device)
    state.costs = costs = StepCosts(engine.module, getattr(engine, "optimizer", None), device)
    bar = tqdm(total=settings.steps, initial=resumed, desc="train", disable=not progress or rank != 0 or None)
    loss_value, started = float("nan"), time.perf_counter()
    while state.step < settings.steps:
        costs.start_step()
        t0 = time.perf_counter()
        state.extra_metrics = {}
        for cb in callbacks:
            cb.on_step_start(state)
        chunks = micro_batches(len(examples), state.step, settings, rank, world)
        loss_value, tokens = 0.0, 0
        for m, chunk in enumerate(chunks):
            batch = to_device(objective.batch([examples[i] for i in chunk]), device)
            tokens += batch_tokens(batch)
            # Under data parallelism each rank divides by (global targets / world): the gradient
            # average over ranks is then exactly the global batch's mean, as with one worker.
            normalizer = _mean_over_ranks(objective.target_count(batch), device) if world > 1 else None
            with autocast:
                loss = objective.loss(engine.module, batch, normalizer)
            engine.backward(loss, last_micro=m == len(chunks) - 1)
            loss_value += loss.item() / len(chunks)
        if world > 1:  # log the global batch's loss, not rank 0's shard
            loss_value = _mean_over_ranks(loss_value, device)
        for cb in callbacks:
            cb.on_before_optimizer_step(state)
        engine.step()
        state.step += 1
        seconds = time.perf_counter() - t0
        costs.end_step(seconds, tokens)
        metrics = {"step": state.step, "loss": loss_value, "lr": engine.lr(), "step_time_s": seconds,
                   **state.extra_metrics}
        for cb in callbacks:  # a callback may add values (an evaluation's) before the line is written
            cb.on_step_end(state, metrics)
        if log:
            log.write(metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        every = settings.checkpoint_every
        if state.step == settings.steps or (every and state.step % every == 0):
            checkpoints.save(state.step, engine, callbacks, extra, {**metrics, "steps": settings.steps})
    bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    summary = costs.summary(world)
    if world > 1:  # the run needs what its largest rank needs
        summary["peak_memory"] = int(_mean_over_ranks(summary["peak_memory"], device, "max"))
    return {"steps": state.step, "resumed_from": resumed, "final_loss": loss_value,
            "train_time_s": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(device), "costs": summary}


def _mean_over_ranks(value: float, device: torch.device, op: str = "mean") -> float:
    """The mean (or, with ``op="max"``, the maximum) of ``value`` over the ranks."""
    import torch.distributed as dist

    total = torch.tensor([value], dtype=torch.float64, device=device)
    if op == "max":
        dist.all_reduce(total, op=dist.ReduceOp.MAX)
        return float(total)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak-memory window (so the peak measures training, not loading or evaluation).

    On CPU this resets the process's resident-set high-water mark (Linux ``clear_refs``; where
    that is not allowed the peak keeps counting from process start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory on GPU, on CPU the peak resident set size, since `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _MetricsLog:
    """``metrics.jsonl``: one line per step; lines past a resumed step are dropped first, so a
    resumed run's log has each step once."""

    def __init__(self, path: Path, resumed_step: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # rewritten whole: a crash here leaves the old file, never half of it
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resumed_step]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)
        self.path = path

    def write(self, metrics: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(metrics) + "\n")


def _step_of(line: str) -> float:
    """The step a metrics line records; a torn line (a crash mid-write) counts as past any step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
