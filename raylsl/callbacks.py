"""What the training loop lets other code hook into: `Callback` and the `LoopState` it sees.

Dynamic selectors (IST, LISA) act through callbacks; the loop does not know them, and they do not
import the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class LoopState:
    """What callbacks see: the model, the optimizer, and where the run is."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    settings: Any
    """The run's `TrainSettings`."""
    run_dir: Path
    """Where rank 0 writes the run's records (metrics, a dynamic selector's record)."""
    step: int = 0
    """Completed optimizer steps."""
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    """Callbacks put per-step values here; they are written to the metrics line."""
    costs: Any = None
    """The run's `raylsl.training.costs.StepCosts` so far (set by the loop when training starts)."""


class Callback:
    """Hooks into the loop; every method is optional."""

    def on_train_start(self, state: LoopState) -> None: ...

    def on_step_start(self, state: LoopState) -> None: ...

    def on_before_optimizer_step(self, state: LoopState) -> None: ...

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, state: LoopState) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this callback; saved in every checkpoint (tensors,
        numbers, strings, lists and dicts only: checkpoints are read with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
