"""A line per trial result while a sweep runs: which trial is at which step, and how it is doing.

Tune's own table shows trial states; it does not say how far into its steps a trial is. Trials
report at every checkpoint (``train.checkpoint_every``), at their evaluations and at their end;
`TrialProgress` prints one line for each of those reports::

    trial 3 (a1b2c3d4, cka n=0.5 r=8): step 40/120, loss 0.412, val_acc 0.731
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raylsl.report import trial_number


def trial_label(trial) -> str:
    params = trial.config
    selector = params.get("selector", "all")
    parts = [selector] + ([f"n={params['n']:.3g}" if isinstance(params["n"], float) else f"n={params['n']}"]
                          if "n" in params and selector != "all" else [])
    parts += [f"r={params['lora.r']}"] if "lora.r" in params else []
    return f"trial {trial_number(trial.experiment_tag)} ({trial.trial_id}, {' '.join(parts)})"


def progress_line(trial, result: dict[str, Any], metric: str) -> str | None:
    """The line for one result (None: a result without a step)."""
    step = result.get("step")
    if step is None:
        return None
    total = result.get("steps")
    where = f"step {int(step)}/{int(total)}" if total else f"step {int(step)}"
    values = [f"loss {result['loss']:.3f}"] if isinstance(result.get("loss"), float) else []
    key = f"val_{metric}"
    if isinstance(result.get(key), (int, float)):
        values.append(f"{key} {result[key]:.3f}" + (" (final)" if result.get("final") else ""))
    return f"{trial_label(trial)}: {where}" + (", " + ", ".join(values) if values else "")


class TrialProgress(Callback):
    """Prints `progress_line` for every trial result the driver receives."""

    def __init__(self, metric: str = "acc"):
        self.metric = metric

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        line = progress_line(trial, result, self.metric)
        if line:
            print(line, flush=True)
