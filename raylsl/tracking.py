"""Experiment tracking where users look: TensorBoard event files of a run.

``tracking=tensorboard`` writes, on rank 0, per-step loss, learning rate and step time
(``train/*``), every evaluation (``eval_before/*`` at step 0, ``eval_after/*`` at the last step),
the chosen blocks (a text entry) and the final metrics, into ``RUN_DIR/tensorboard`` (or
``tracking_uri``). A Ray Train worker writes into its own directory, which comes back to the driver
in the run's final checkpoint like every other record. ``tensorboard --logdir RUN_DIR`` shows it.
Sweeps need nothing from here: Ray Tune writes TensorBoard files of every trial's reports itself
(``tune/`` in the sweep's storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raylsl.callbacks import Callback, LoopState
from raylsl.errors import RaylslError

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker(Callback):
    """Writes a run's scalars and its chosen blocks as TensorBoard events."""

    def __init__(self, log_dir: Path, blocks: str, config: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RaylslError("tracking=tensorboard needs the tensorboard package: pip install 'raylsl[tracking]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("run/blocks", blocks, 0)
        self.writer.add_text("run/config", "".join(f"    {line}\n" for line in config.splitlines()), 0)

    def log_metrics(self, prefix: str, metrics: dict[str, Any] | None, step: int) -> None:
        for name, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        for name in ("loss", "lr", "step_time_s"):
            if name in metrics:
                self.writer.add_scalar(f"train/{name}", metrics[name], state.step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
