"""What training costs, as a sweep can rank it: peak memory, step time, tokens per second.

The names are the sweep objectives' (`raylsl.report.COSTS`) and the estimate's (``estimated_memory``
is `raylsl.fit.estimate`'s total), so measured and estimated figures sit side by side.

- ``peak_memory`` (bytes): on a GPU, ``torch.cuda.max_memory_allocated`` since the training window
  opened (weights included). On a CPU, torch's own accounting: the bytes of the tensors the run
  holds when training starts (weights, buffers, any restored optimizer state) plus the peak of live
  tensor bytes over the warm-up steps, which `raylsl.models.memory.LiveBytes` tracks (activations,
  gradients, and AdamW's moments, created by the first optimizer step and alive through the
  second). Not the resident set size: RSS also counts the Python heap, imports, glibc arenas that
  keep freed pages and whatever else shares the process (a Ray worker, the tokenizer), it depends on
  what ran before, and its high-water mark cannot be reset everywhere; live tensor bytes are the
  same on every run of the same configuration. Under data parallelism: the maximum over ranks.
- ``step_time`` (seconds): the median over the timed steps, the `WARMUP_STEPS` first steps of the
  process excluded (lazy initialisation, allocator growth, and on a CPU the accounting above).
  ``step_time_spread``: the interquartile range of those steps over their median, so a reader can
  tell a difference between trials from noise (``timed_steps`` says how many there were).
- ``tokens_per_second``: tokens the forward passes read (padding excluded) over the timed steps'
  time, rank 0's figure times the ranks (each rank reads its own shard of an equal-sized batch).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

WARMUP_STEPS = 2
"""Steps of each process not timed (and, on a CPU, the steps whose live tensor bytes are tracked)."""


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a micro-batch's forward reads: its attention mask's ones, else every input id."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def held_bytes(model: nn.Module, optimizer=None) -> int:
    """Bytes of the tensor storages the model (parameters, buffers) and the optimizer's state hold,
    each storage once."""
    tensors = [*model.parameters(), *model.buffers()]
    state = getattr(optimizer, "state", None)
    if isinstance(state, dict):
        for values in state.values():
            tensors += [v for v in values.values() if isinstance(v, torch.Tensor)]
    storages = {}
    for tensor in tensors:
        if tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
    return sum(storages.values())


class StepCosts:
    """Times each step and tracks peak memory for one process's training (see the module docstring).
    The loop calls `start_step` / `end_step` around each optimizer step; `summary` gives the costs so
    far, so an evaluation during training (a sweep's rung) reports them too."""

    def __init__(self, model: nn.Module, optimizer, device: torch.device, warmup: int = WARMUP_STEPS):
        self.device, self.warmup = device, warmup
        self.all_times: list[float] = []
        self.all_tokens: list[int] = []
        self.steps = 0
        self.cuda = device.type == "cuda"
        self.base = 0 if self.cuda else held_bytes(model, optimizer)
        self._live = None
        self.live_peak = 0
        """Peak live tensor bytes over the warm-up steps (CPU)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def start_step(self) -> None:
        if not self.cuda and self.steps < self.warmup:
            if self._live is None:
                from raylsl.models.memory import LiveBytes

                self._live = LiveBytes()
            self._live.__enter__()  # one tracker over the warm-up: AdamW's moments stay counted

    def end_step(self, seconds: float, tokens: int) -> None:
        if self._live is not None and self.steps < self.warmup:
            self._live.__exit__(None, None, None)  # not around checkpoints and evaluations
            self.live_peak = self._live.peak
        self.steps += 1
        self.all_times.append(seconds)
        self.all_tokens.append(tokens)

    def peak_memory(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return self.base + self.live_peak

    def summary(self, world: int = 1) -> dict[str, Any]:
        """The costs so far; a run shorter than its warm-up times the steps it has."""
        timed = slice(self.warmup, None) if self.steps > self.warmup else slice(None)
        times, tokens = self.all_times[timed], sum(self.all_tokens[timed])
        median = statistics.median(times) if times else float("nan")
        if len(times) >= 2:
            q1, _, q3 = statistics.quantiles(times, n=4)
            spread = (q3 - q1) / median if median > 0 else float("nan")
        else:
            spread = float("nan")
        seconds = sum(times)
        return {"peak_memory": self.peak_memory(), "step_time": median, "step_time_spread": spread,
                "tokens_per_second": world * tokens / seconds if seconds > 0 else float("nan"),
                "timed_steps": len(times),
                "peak_memory_source": "cuda_max_memory_allocated" if self.cuda else "torch_live_bytes"}
