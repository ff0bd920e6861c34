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
import math
import random
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from raylsl.config import TrainSettings
from raylsl.data import MCExample
from raylsl.objective import Objective, to_device
from raylsl.training.checkpoint import restore_latest, save_checkpoint


@dataclass
class LoopState:
    """What callbacks see: the model, the optimizer, and where the run is."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    settings: TrainSettings
    run_dir: Path
    step: int = 0
    """Completed optimizer steps."""
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    """Callbacks put per-step values here; they are written to the metrics line."""


class Callback:
    """Hooks into the loop; every method is optional."""

    def on_train_start(self, state: LoopState) -> None: ...

    def on_step_start(self, state: LoopState) -> None: ...

    def on_before_optimizer_step(self, state: LoopState) -> None: ...

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, state: LoopState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this callback; saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_for(settings: TrainSettings, device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU under ``precision=auto``, or wherever ``precision=bf16``; else off."""
    use_bf16 = settings.precision == "bf16" or (settings.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def build_optimizer(model: nn.Module, settings: TrainSettings):
    """AdamW over trainable parameters with linear warmup then cosine decay to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        span = max(settings.steps - settings.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - settings.warmup_steps, span) / span))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def micro_batches(n_examples: int, step: int, settings: TrainSettings) -> list[list[int]]:
    """Example indices of each micro-batch of ``step``: a seeded permutation per epoch."""
    per_step = settings.batch_size * settings.grad_accum
    start = step * per_step
    indices = []
    while len(indices) < per_step:
        epoch, offset = divmod(start + len(indices), n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
        indices += perm[offset: offset + per_step - len(indices)].tolist()
    return [indices[i: i + settings.batch_size] for i in range(0, per_step, settings.batch_size)]


def train_loop(model: nn.Module, objective: Objective, examples: list[MCExample], settings: TrainSettings,
               run_dir: Path, callbacks: tuple[Callback, ...] = (), progress: bool = True) -> dict[str, Any]:
    """Trains ``model``'s trainable parameters; resumes from ``run_dir``'s newest checkpoint.

    Returns:
        ``{"steps", "resumed_from", "final_loss", "train_time_s", "peak_memory_mb"}``.
    """
    device = next(model.parameters()).device
    optimizer, scheduler = build_optimizer(model, settings)
    state = LoopState(model, optimizer, settings, run_dir)
    state.step = resumed = restore_latest(run_dir, model, optimizer, scheduler, callbacks)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, resumed)
    autocast = autocast_for(settings, device)
    model.train()
    for cb in callbacks:
        cb.on_train_start(state)
    bar = tqdm(total=settings.steps, initial=resumed, desc="train", disable=not progress or None)
    loss_value, started = float("nan"), time.perf_counter()
    with metrics_path.open("a") as log:
        while state.step < settings.steps:
            t0 = time.perf_counter()
            state.extra_metrics = {}
            for cb in callbacks:
                cb.on_step_start(state)
            loss_value = 0.0
            for chunk in micro_batches(len(examples), state.step, settings):
                batch = to_device(objective.batch([examples[i] for i in chunk], train=True), device)
                with autocast:
                    loss = objective.loss(model, batch) / settings.grad_accum
                loss.backward()
                loss_value += loss.item()
            for cb in callbacks:
                cb.on_before_optimizer_step(state)
            if settings.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            metrics = {"step": state.step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                       "step_time_s": time.perf_counter() - t0, **state.extra_metrics}
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            for cb in callbacks:
                cb.on_step_end(state, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            every = settings.checkpoint_every
            if state.step == settings.steps or (every and state.step % every == 0):
                save_checkpoint(run_dir, state.step, model, optimizer, scheduler, callbacks)
    bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return {"steps": state.step, "resumed_from": resumed, "final_loss": loss_value,
            "train_time_s": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(device)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory on GPU; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops metric lines past the resumed step, so a resumed run's log has each step once."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))
