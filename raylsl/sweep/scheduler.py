"""Pareto-aware successive halving: stop trials that are plainly dominated early.

Ray Tune's ASHA and HyperBand rank trials by one metric; a sweep has two or three (the task's
validation metric: accuracy or exact match up, or loss down; trainable parameters down by default,
or the space file's ``objectives:``, such as peak memory and step time, whose values at a rung are
those of the steps so far: `raylsl.training.costs`). `ParetoHalving`
keeps ASHA's asynchronous rungs, at fractions ``eta**-rungs, ..., eta**-1`` of a trial's steps,
and ranks the trials that reached a rung by non-dominated sorting (NSGA-II's fronts, ties broken
by crowding distance, boundary points first).
A trial reaching a rung continues when it is on the rung's first front or among the best
``ceil(n / eta)`` of the ``n`` trials recorded there; otherwise it stops. Trials whose validation
metric ties at a rung are ordered by their validation loss (`rung_points`): early in training an
accuracy is often the majority-class rate for every trial (0.64 for all 120 trials at step 5 of
the 40-trial sampler benchmark), and the parameter count alone would decide. Fewer than ``eta``
trials at a rung stop nobody, and the all-block baseline never stops (the recommendation is
measured against it).

Trials evaluate at their rungs (`raylsl.sweep.trial.eval_steps`) on the validation subset
(``train.eval_subset``) and report ``final: False``; the scheduler reads only those reports.
Its records are written to ``scheduler.json`` in the sweep's storage at every decision and read
back by a resumed sweep, so a resumed sweep ranks later trials against the same rungs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raylsl.report import SCHEDULER_STATE as STATE, objectives, pareto_mask
from raylsl.storage import Storage


def rung_fractions(eta: int, rungs: int) -> tuple[float, ...]:
    """``(eta**-rungs, ..., eta**-1)``: where a trial is judged, as fractions of its steps."""
    return tuple(float(eta) ** -k for k in range(rungs, 0, -1))


def front_ranks(points: np.ndarray, directions: Sequence[str] = ("max", "min")) -> np.ndarray:
    """Non-dominated sorting of ``(n, k)`` points (the validation metric, then the costs): 0 for
    the front, 1 for the front of the rest, and so on."""
    points = np.asarray(points, dtype=float)
    ranks = np.full(len(points), -1)
    left = np.arange(len(points))
    level = 0
    while len(left):
        mask = pareto_mask(points[left], list(directions))
        if not mask.any():  # NaN points: last
            ranks[left] = level
            break
        ranks[left[mask]] = level
        left = left[~mask]
        level += 1
    return ranks


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of points on one front: the boundary points of each objective
    get infinity, the others the normalised gap between their neighbours, summed."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(points.shape[1]):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return distance


def rung_points(records: Sequence[tuple], directions: Sequence[str] = ("max", "min")) -> np.ndarray:
    """The ``(n, k)`` points of a rung's records ``(metric, cost, ...[, validation loss])``, k the
    number of ``directions``, where trials that tie in the metric are ordered by their loss.

    Each tied group is spread by a quarter of the smallest gap between distinct metric values at
    most, lowest loss best, so no dominance between different metric values changes; equal losses
    stay equal (copies dominate neither), and a group where any trial has no loss stays tied."""
    k = len(directions)
    values = np.array([r[0] for r in records], dtype=float)
    points = np.column_stack([values, *(np.array([r[j] for r in records], dtype=float) for j in range(1, k))])
    losses = np.array([r[k] if len(r) > k and r[k] is not None else np.nan for r in records], dtype=float)
    distinct = np.unique(values[np.isfinite(values)])
    gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
    better = 1.0 if directions[0] == "max" else -1.0
    for value in distinct:
        tied = np.flatnonzero(values == value)
        if len(tied) < 2 or not np.isfinite(losses[tied]).all():
            continue
        levels, rank = np.unique(losses[tied], return_inverse=True)  # 0: the lowest loss
        if len(levels) > 1:
            points[tied, 0] += better * gap / 4 * (1 - rank / (len(levels) - 1))
    return points


def survivors(records: dict[str, tuple], eta: int, directions: Sequence[str] = ("max", "min")) -> set[str]:
    """The trials at a rung that continue: its first front, and the best ``ceil(n / eta)`` by
    (front rank, crowding distance) on `rung_points`; all of them while fewer than ``eta`` are recorded."""
    ids = list(records)
    if len(ids) < eta:
        return set(ids)
    points = rung_points([records[i] for i in ids], directions)
    ranks = front_ranks(points, directions)
    spread = np.zeros(len(ids))
    for level in np.unique(ranks):
        members = np.flatnonzero(ranks == level)
        spread[members] = crowding(points[members])
    order = sorted(range(len(ids)), key=lambda i: (ranks[i], -spread[i], ids[i]))
    keep = {ids[i] for i in order[:math.ceil(len(ids) / eta)]}
    return keep | {ids[i] for i in np.flatnonzero(ranks == 0)}


class ParetoHalving(FIFOScheduler):
    """Tune scheduler: successive halving on the front of the sweep's objectives (the validation
    metric and trainable parameters, or ``goals``)."""

    def __init__(self, eta: int = 3, rungs: int = 2, baseline: dict[str, Any] | None = None,
                 state_to: str | None = None, metric: str = "acc", goals: dict[str, str] | None = None):
        super().__init__()
        if eta < 2 or rungs < 1:
            raise ValueError(f"eta must be >= 2 and rungs >= 1, got eta={eta}, rungs={rungs}")
        self.eta, self.fractions = eta, rung_fractions(eta, rungs)
        self.goals = objectives(metric, goals)
        """Result key -> direction of each objective, the validation metric first."""
        self.key, self.directions = next(iter(self.goals)), tuple(self.goals.values())
        """The validation metric's result key (``val_acc``...) and the objectives' directions."""
        self.baseline = baseline
        """The all-block trial's sampled values (never stopped)."""
        self.state_to = state_to
        """Storage URI of the sweep: ``scheduler.json`` is written there."""
        self.tiebreak = None if self.key == "val_loss" else "val_loss"
        """The result key that orders trials tied in the validation metric (`rung_points`)."""
        self.records: dict[str, dict[str, tuple]] | None = None
        """Rung (as ``f"{fraction:.6g}"``) -> trial id -> (each objective's value in `goals` order,
        then the validation loss or None)."""
        self.stopped: dict[str, str] = {}
        """Trial id -> the rung it was stopped at."""

    # --- state ------------------------------------------------------------------------------------

    def _load(self) -> None:
        if self.records is not None:
            return
        self.records = {f"{f:.6g}": {} for f in self.fractions}
        storage = Storage(self.state_to) if self.state_to else None
        if storage is not None and storage.is_file(STATE):
            saved = storage.read_json(STATE)
            for rung, trials in saved["records"].items():
                self.records.setdefault(rung, {}).update({t: tuple(v) for t, v in trials.items()})
            self.stopped.update(saved["stopped"])

    def _save(self) -> None:
        if self.state_to:
            Storage(self.state_to).write_json(STATE, {"eta": self.eta, "fractions": list(self.fractions),
                                                      "records": self.records, "stopped": self.stopped})

    # --- decisions --------------------------------------------------------------------------------

    def is_baseline(self, config: dict[str, Any]) -> bool:
        from raylsl.sweep.search import run_signature

        return self.baseline is not None and run_signature(config) == run_signature(self.baseline)

    def decide(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> str:
        """CONTINUE or STOP for one reported result (only evaluations during training count)."""
        self._load()
        if trial_id in self.stopped:  # stopped before the driver died, rerun by the resumed sweep
            return TrialScheduler.STOP
        values, fraction = [result.get(k) for k in self.goals], result.get("fraction")
        if result.get("final") is not False or any(v is None for v in values) or fraction is None:
            return TrialScheduler.CONTINUE
        value = values[0]
        decision = TrialScheduler.CONTINUE
        for f in self.fractions:
            rung = self.records[f"{f:.6g}"]
            if fraction + 1e-9 < f or trial_id in rung:
                continue
            loss = result.get(self.tiebreak) if self.tiebreak else None
            rung[trial_id] = (*map(float, values), None if loss is None else float(loss))
            if trial_id not in survivors(rung, self.eta, self.directions) and not self.is_baseline(config):
                self.stopped[trial_id] = f"{f:.6g}"
                decision = TrialScheduler.STOP
                ties = sum(other[0] == float(value) for other in rung.values()) - 1
                tie = f" (tied with {ties} in {self.key}, ordered by {self.tiebreak} {loss:.3f})" \
                    if ties and loss is not None else ""
                costs = " and ".join(f"{v:,.0f} trainable parameters" if k == "trainable_params" else f"{k} {v:.4g}"
                                     for k, v in zip(list(self.goals)[1:], values[1:]))
                print(f"raylsl: trial {trial_id} stopped early at {f:.3g} of its steps: {self.key} {value:.3f} with "
                      f"{costs}{tie} is dominated by the {len(rung) - 1} others there", flush=True)
                break
        self._save()
        return decision

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self.decide(trial.trial_id, trial.config, result)

    def debug_string(self) -> str:
        self._load()
        counts = ", ".join(f"{rung}: {len(trials)}" for rung, trials in self.records.items())
        return f"ParetoHalving(eta={self.eta}): trials per rung {counts}; {len(self.stopped)} stopped"


def _halving(settings: dict[str, Any]) -> bool:
    return settings.get("scheduler", "none") != "none"


def sweep_scheduler(settings: dict[str, Any], export_to: str):
    """The scheduler a sweep's settings ask for (None: every trial runs to its end)."""
    return ParetoHalving(settings["eta"], settings["rungs"], settings.get("baseline"), export_to,
                         settings.get("metric", "acc"), settings.get("objectives")) \
        if _halving(settings) else None


def sweep_rungs(settings: dict[str, Any]) -> tuple[float, ...]:
    """Where a sweep's trials evaluate and report for its scheduler (none without one)."""
    return rung_fractions(settings["eta"], settings["rungs"]) if _halving(settings) else ()


SCHEDULERS: Sequence[str] = ("none", "pareto_halving")
