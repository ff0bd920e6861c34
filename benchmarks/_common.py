"""Helpers shared by the benchmarks: loading SmolLM2 + a task once, and timing selections."""

from __future__ import annotations

from raylsl.config import CalibrationSettings, DataSettings, TaskSettings
from raylsl.data import load_task
from raylsl.models import find_blocks, resolve_model
from raylsl.objective import make_objective
from raylsl.selectors import Budget, build_selector, select_blocks


class Bench:
    """A loaded model with its blocks and objective, ready to score on any task."""

    def __init__(self, model: str = "smollm2-135m", max_length: int = 64):
        spec = resolve_model(model)
        self.model, tokenizer = spec.load()
        self.blocks = find_blocks(self.model)[1]
        self.objective = make_objective(spec.kind, tokenizer, max_length)
        self.max_length = max_length
        self._tasks: dict[str, list] = {}

    def train_split(self, task: str) -> list:
        if task not in self._tasks:
            self._tasks[task] = load_task(TaskSettings(name=task), DataSettings()).train
        return self._tasks[task]

    def select(self, selector: str, task: str = "sarcasm", seed: int = 0, size: int = 128, n=0.5):
        """Uncached selection (so its time is real scoring time)."""
        return select_blocks(self.model, self.blocks, self.objective, self.train_split(task), build_selector(selector),
                             Budget(n), CalibrationSettings(size=size, seed=seed), None, self.max_length,
                             use_cache=False)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b between two score vectors (ties handled)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_a) * (concordant + discordant + ties_b)) ** 0.5
    return (concordant - discordant) / denom if denom else 0.0
