"""Pareto reports of a sweep: the task's validation metric against trainable parameters, or
against what training costs (``objectives:`` in the space file; `COSTS`).

    report = raylsl.report.load("runs/sweep-default-...")
    report.trials            # every trial (pandas DataFrame), failed ones with their error
    report.pareto_front()    # the non-dominated finished trials: best validation metric, fewest parameters
    report.plot("front.png")
    report.recommend(eps=0.01)  # the fewest parameters within eps of all blocks, with bootstrap intervals
    report.recommend(eps=0.01, cost="peak_memory")  # the least memory instead, and what it saves
    load("runs/sweep-...", objectives="val_acc,peak_memory").pareto_front()  # re-cut on recorded columns

The trials come from what Ray Tune writes as JSON and text into each trial's directory (``tune/``
in the sweep's storage: ``params.json``, ``result.json``, ``error.txt``), with each trial's final
checkpoint (its adapter and raylsl's ``results.json``); Tune's pickled trial and experiment states
are never read, so a report from storage anyone else can write runs no code of theirs. The Optuna
study is not consulted either, so a trial Optuna lost track of still counts. The metric is the
task's (`METRICS`: accuracy for multiple choice, exact match or held-out loss for generative
tasks), named in the columns (``val_acc``, ``val_exact_match``, ``val_loss``, and ``test_*``). The
test metric is filled in only for front members, by `raylsl.sweep.run.evaluate_front` after the
search. ``load`` takes the local sweep directory or the sweep's storage URI, so a report can be
made from any machine that reads the storage.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from raylsl.errors import ConfigError
from raylsl.storage import RunDir, Storage, is_remote

METRICS = {"acc": "max", "exact_match": "max", "loss": "min"}
"""The metrics a sweep can rank trials by, and their direction."""
LABELS = {"acc": "accuracy", "exact_match": "exact match", "loss": "loss"}
SHORT = {"acc": "acc", "exact_match": "exact match", "loss": "loss"}
"""How tables and the recommendation name the metric (``val acc``, ``test exact match``)."""
STOPPED = "STOPPED_EARLY"
"""A trial the sweep's scheduler stopped at a rung; its validation metric is the rung's (subset) evaluation."""
INFEASIBLE = "INFEASIBLE"
"""A trial the fit check refused before it loaded anything: it cannot fit where it would train."""
SCHEDULER_STATE = "scheduler.json"
"""The scheduler's rung records and the trials it stopped, in the sweep's storage."""


COSTS = {"trainable_params": "min", "peak_memory": "min", "step_time": "min", "tokens_per_second": "max",
         "estimated_memory": "min"}
"""What a trial's training costs, as recorded result keys (`raylsl.training.costs`), and the
direction each is better in: the objectives a sweep can trade the validation metric against."""
COST_LABELS = {"trainable_params": "trainable parameters", "peak_memory": "peak memory (MiB)",
               "step_time": "step time (s)", "tokens_per_second": "tokens/s", "estimated_memory": "est. memory (MiB)"}
RATIO_LABELS = {"trainable_params": "parameters", "peak_memory": "memory", "step_time": "step time",
                "tokens_per_second": "tokens/s", "estimated_memory": "estimated memory"}
"""How the recommendation names a cost ratio ("0.52x memory")."""
RECORDED = ("peak_memory", "step_time", "step_time_spread", "tokens_per_second", "estimated_memory")
"""The cost columns a report reads from each trial's last result (NaN when not recorded)."""


def objectives(metric: str = "acc", chosen: Any = None, where: str = "objectives") -> dict[str, str]:
    """A sweep's objectives as Tune result keys and directions, the validation metric first.

    Args:
        metric: the validation metric (a key of `METRICS`).
        chosen: None for the default two (the validation metric, and trainable parameters
            minimised); else 2 or 3 objectives: a mapping or list of ``{name: direction}`` (the
            space file's ``objectives:``), or names alone (``"val_acc,peak_memory"``, each then in
            its own direction). One must be the validation metric (``val_<metric>``).
        where: what to name in an error (the file and key, or the flag).

    Raises:
        ConfigError: an unknown name, a wrong direction, a repeat, or not 2-3 objectives.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r}; choose one of {', '.join(METRICS)}")
    val = f"val_{metric}"
    if chosen is None:
        return {val: METRICS[metric], "trainable_params": "min"}
    pairs = _objective_pairs(chosen, where)
    known = {val: METRICS[metric], **COSTS}
    names = [name for name, _ in pairs]
    for name, direction in pairs:
        if name not in known:
            raise ConfigError(f"{where}: unknown objective {name!r}; choose 2 or 3 of {', '.join(known)}")
        if direction not in ("max", "min", None):
            raise ConfigError(f"{where}: {name}: direction {direction!r} must be max or min")
        if direction is not None and direction != known[name]:
            raise ConfigError(f"{where}: {name} is better when {'higher' if known[name] == 'max' else 'lower'}: "
                              f"write {name}: {known[name]}, not {direction}")
    if len(set(names)) != len(names) or not 2 <= len(names) <= 3 or val not in names:
        raise ConfigError(f"{where}: list 2 or 3 different objectives, {val} among them, e.g. "
                          f"[{val}: {METRICS[metric]}, peak_memory: min, step_time: min]; got {names}")
    return {val: known[val], **{name: known[name] for name in names if name != val}}


_objectives = objectives  # for `load`, whose argument of that name shadows it


def _objective_pairs(chosen: Any, where: str) -> list[tuple[str, str | None]]:
    """``(name, direction or None)`` from a mapping, a list of one-key mappings or names, or a
    comma-separated string."""
    if isinstance(chosen, str):
        return [(name.strip(), None) for name in chosen.split(",") if name.strip()]
    if isinstance(chosen, dict):
        return list(chosen.items())
    if isinstance(chosen, (list, tuple)):
        pairs = []
        for item in chosen:
            if isinstance(item, dict) and len(item) == 1:
                pairs.append(next(iter(item.items())))
            elif isinstance(item, str):
                pairs.append((item, None))
            else:
                raise ConfigError(f"{where}: each objective is `name: max` or `name: min`, got {item!r}")
        return pairs
    raise ConfigError(f"{where}: expected a list such as [val_acc: max, peak_memory: min], got {chosen!r}")


def columns(metric: str = "acc") -> list[str]:
    """The report's columns. ``checkpoint``: the URI of the trial's final checkpoint (``adapter/``
    and ``results.json`` inside); ``curve``: the validation metric by step, ``[[step, value], ...]``
    (JSON)."""
    return ["trial", "trial_id", "status", "selector", "n", "rank", "blocks", "trainable_params", "pct_of_all_blocks",
            f"val_{metric}", f"test_{metric}", "train_time_s", "selection_time_s", *RECORDED, "checkpoint", "params",
            "error", "curve"]


def pareto_mask(values: Sequence[Sequence[float]] | np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """The non-dominated rows of an ``(n, k)`` array.

    Row a dominates row b when a is at least as good in every objective and strictly better in one
    (``directions[j]`` is ``"max"`` or ``"min"``). Duplicated rows dominate neither each other:
    all copies of a non-dominated point are kept. Rows with a NaN are never on the front.
    """
    points = np.asarray(values, dtype=float)
    if points.ndim != 2 or points.shape[1] != len(directions):
        raise ValueError(f"values must be (n, {len(directions)}), got shape {points.shape}")
    bad = [d for d in directions if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions must be 'max' or 'min', got {bad}")
    signs = np.array([1.0 if d == "max" else -1.0 for d in directions])
    gains = points * signs  # every objective maximised
    valid = ~np.isnan(gains).any(axis=1)
    mask = valid.copy()
    others = gains[valid]
    for i in np.flatnonzero(valid):
        dominated = (others >= gains[i]).all(axis=1) & (others > gains[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives maximised) above ``reference``."""
    kept = [p for p in np.asarray(points, dtype=float) if p[0] > reference[0] and p[1] > reference[1]]
    area, best_y = 0.0, reference[1]
    for x, y in sorted(kept, key=lambda p: -p[0]):
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area


@dataclass
class SweepReport:
    """A sweep's trials and its front; see the module docstring."""

    run_dir: Path
    """The local sweep directory (the report's files are written here and to storage)."""
    trials: "pd.DataFrame"  # noqa: F821
    planned: int | None = None
    """Trials the sweep was asked for."""
    storage: Storage | None = None
    """The sweep's storage directory (``run_dir`` itself without ``storage=``)."""
    metric: str = "acc"
    """The validation metric trials are ranked by (a key of `METRICS`)."""
    objectives: dict[str, str] | None = None
    """The objectives the front is cut on (result key -> direction, the validation metric first);
    None: the validation metric and trainable parameters."""

    @property
    def goals(self) -> dict[str, str]:
        """The front's objectives and their directions."""
        return self.objectives or objectives(self.metric)

    @property
    def costs(self) -> list[str]:
        """The front's cost objectives (all but the validation metric)."""
        return [name for name in self.goals if name != self.val]

    @property
    def val(self) -> str:
        """The column of the validation metric (``val_acc``, ``val_exact_match``, ``val_loss``)."""
        return f"val_{self.metric}"

    @property
    def test(self) -> str:
        return f"test_{self.metric}"

    @property
    def maximise(self) -> bool:
        return METRICS[self.metric] == "max"

    def _best_first(self, frame, by_params: bool = True, cost: str | None = None):
        """Sorted by ``cost`` (default: the front's first cost), then the metric; or by the metric alone."""
        if not by_params:
            return frame.sort_values([self.val], ascending=[not self.maximise])
        cost = cost or self.costs[0]
        keys = list(dict.fromkeys([cost, self.val, "trainable_params"]))
        return frame.sort_values(keys, ascending=[self.goals.get(k, COSTS.get(k)) != "max" for k in keys])

    @property
    def complete(self) -> bool:
        """Every planned trial finished or failed (an interrupted sweep is not complete)."""
        done = int(self.trials["status"].isin(["TERMINATED", "ERROR", STOPPED, INFEASIBLE]).sum())
        return self.planned is None or done >= self.planned

    def pareto_front(self):
        """Finished trials that no other finished trial beats on every objective (`goals`: the
        validation metric and trainable parameters, or the sweep's or the re-cut's), sorted by the
        first cost. A trial without a value of some objective is not on the front."""
        done = self.trials[self.trials["status"] == "TERMINATED"]
        if done.empty:
            return done
        goals = self.goals
        mask = pareto_mask(done[list(goals)].to_numpy(dtype=float), list(goals.values()))
        return self._best_first(done[mask])

    def baseline(self):
        """The all-blocks LoRA trial(s) that finished."""
        return self.trials[(self.trials["selector"] == "all") & (self.trials["status"] == "TERMINATED")]

    def plot(self, path: str | Path | None = None):
        """Every finished trial as a point coloured by selector, the front as a step line, all-block
        LoRA as a star; returns the matplotlib figure (and saves it when ``path`` is given). A front
        on other costs than trainable parameters is drawn as its pairwise projections (`plot_pairs`)."""
        if self.costs != ["trainable_params"]:
            return self.plot_pairs(path)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        fig, ax = plt.subplots(figsize=(8.5, 4.8))
        done = self.trials[self.trials["status"] == "TERMINATED"]
        for selector, group in done.groupby("selector"):
            ax.scatter(group["trainable_params"], group[self.val], label=selector, alpha=0.75, s=30)
        front = self.pareto_front()
        if not front.empty:
            ax.step(front["trainable_params"], front[self.val], where="post", color="black", lw=1.2,
                    label="Pareto front")
        base = self.baseline()
        if not base.empty:
            ax.scatter(base["trainable_params"], base[self.val], marker="*", s=260, color="gold",
                       edgecolor="black", zorder=5, label="all blocks (LoRA)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"validation {LABELS[self.metric]}" + ("" if self.maximise else " (lower is better)"))
        ax.set_title(self._title(len(done)))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
        ax.grid(alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        plt.close(fig)
        return fig

    def _title(self, finished: int) -> str:
        failed = int((self.trials["status"] == "ERROR").sum())
        stopped = int((self.trials["status"] == STOPPED).sum())
        infeasible = int((self.trials["status"] == INFEASIBLE).sum())
        notes = [f"{failed} failed"] * bool(failed) + [f"{stopped} stopped early"] * bool(stopped) \
            + [f"{infeasible} cannot fit"] * bool(infeasible)
        return f"{self.run_dir.name}: {finished} trials" + (f" ({', '.join(notes)})" if notes else "")

    def plot_pairs(self, path: str | Path | None = None):
        """The front's pairwise projections, one panel per pair of objectives (the metric against
        each cost, each cost against the other): every finished trial coloured by selector, front
        members ringed in black, all-block LoRA as a star. Memory is drawn in MiB."""
        import itertools

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        goals = list(self.goals)
        pairs = list(itertools.combinations(goals, 2))
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs) + 1.8, 4.4), squeeze=False)
        done = self.trials[self.trials["status"] == "TERMINATED"]
        front, base = self.pareto_front(), self.baseline()
        scale = lambda frame, key: frame[key] / 2**20 if key.endswith("memory") else frame[key]  # noqa: E731
        for ax, (y, x) in zip(axes[0], [(a, b) if a == self.val else (b, a) for a, b in pairs]):
            for selector, group in done.groupby("selector"):
                ax.scatter(scale(group, x), scale(group, y), label=selector, alpha=0.75, s=30)
            if not front.empty:
                ax.scatter(scale(front, x), scale(front, y), facecolors="none", edgecolors="black", s=90, lw=1.3,
                           label="on the front")
            if not base.empty:
                ax.scatter(scale(base, x), scale(base, y), marker="*", s=220, color="gold", edgecolor="black",
                           zorder=5, label="all blocks (LoRA)")
            ax.set_xlabel(self._axis_label(x))
            ax.set_ylabel(self._axis_label(y))
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="upper right")
        fig.suptitle(self._title(len(done)) + f"; front over {', '.join(goals)}", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
        if path is not None:
            fig.savefig(path, dpi=120)
        plt.close(fig)
        return fig

    def _axis_label(self, key: str) -> str:
        if key == self.val:
            return f"validation {LABELS[self.metric]}"
        return COST_LABELS[key] + (" (higher is better)" if COSTS[key] == "max" else "")

    def recommend(self, eps: float = 0.01, n_boot: int = 2000, seed: int = 0,
                  cost: str = "trainable_params") -> dict[str, Any]:
        """Which blocks to train: the finished trial with the lowest ``cost`` (a `COSTS` key:
        fewest trainable parameters by default, or least ``peak_memory``, ``step_time``...) whose
        validation metric is within ``eps`` of the all-block baseline's (at least baseline - eps for
        accuracy and exact match, at most baseline + eps for loss), ties to the better metric, so it
        is a front member.

        Returns the trial's row as a dict with ``val_ci``, ``baseline_val`` (also under
        ``baseline_val_acc``/``baseline_val_loss``..., the metric's column name), ``baseline_ci`` and
        ``diff_ci``: 95% percentile intervals from a paired bootstrap over the validation examples
        (every trial is validated on the same examples; ``None`` when a trial's results hold no
        per-example record), and ``text``, the sentence ``pareto.md`` and ``raylsl report`` open
        with. ``trial_id`` is None when there is no baseline, or when no trial with fewer
        parameters than the baseline is within ``eps`` (then: train all blocks). With a ``cost``
        other than trainable parameters, ``text`` says what the pick saves against all blocks
        ("blocks 18-29 at r8: 0.52x memory, 0.61x step time, 0.40x parameters of all blocks, val acc
        -0.4 points [-1.1, +0.3]") and ``ratios`` holds those factors.

        Raises:
            ConfigError: ``cost`` is not a `COSTS` key, or no finished trial recorded it.
        """
        if cost not in COSTS:
            raise ConfigError(f"--cost {cost}: choose one of {', '.join(COSTS)}")
        done = self.trials[self.trials["status"] == "TERMINATED"]
        if not done.empty and not np.isfinite(done[cost].to_numpy(dtype=float)).any():
            raise ConfigError(f"--cost {cost}: no finished trial of {self.run_dir.name} recorded {cost} (a sweep "
                              f"from before costs were recorded has trainable_params only)")
        base = self.baseline()
        if base.empty:
            return {"trial_id": None, "eps": eps,
                    "text": "No recommendation: the all-block baseline trial did not finish."}
        val, name, short = self.val, LABELS[self.metric], SHORT[self.metric]
        baseline = self._best_first(base, by_params=False).iloc[0]
        margin = eps + 1e-12
        within = done[done[val] >= baseline[val] - margin] if self.maximise else done[done[val] <= baseline[val] + margin]
        within = within[np.isfinite(within[cost].to_numpy(dtype=float))]
        pick = self._best_first(within, cost=cost).iloc[0] if not within.empty else baseline
        better = pick[cost] < baseline[cost] if COSTS[cost] == "min" else pick[cost] > baseline[cost]
        if not better:
            fewer = "fewer trainable parameters" if cost == "trainable_params" else f"a better {RATIO_LABELS[cost]}"
            return {"trial_id": None, "eps": eps, "cost": cost, "baseline_val": float(baseline[val]),
                    f"baseline_{val}": float(baseline[val]),
                    "text": f"No trial with {fewer} than all-block LoRA is within {eps:g} of "
                            f"its validation {name} ({baseline[val]:.3f}): train all blocks."}
        ours, theirs = _per_example(pick["checkpoint"], self.metric), _per_example(baseline["checkpoint"], self.metric)
        out = {**{k: _plain(v) for k, v in pick.to_dict().items()}, "eps": eps, "baseline_val": float(baseline[val]),
               f"baseline_{val}": float(baseline[val]), "baseline_trainable_params": int(baseline["trainable_params"]),
               "val_ci": None, "baseline_ci": None, "diff_ci": None, "n_val": None}
        if ours is not None and theirs is not None and len(ours) == len(theirs) and len(ours) > 0:
            rng = np.random.default_rng(seed)
            index = rng.integers(0, len(ours), size=(n_boot, len(ours)))
            a, b = _ratio(ours[index]), _ratio(theirs[index])
            out.update(val_ci=_interval(a), baseline_ci=_interval(b), diff_ci=_interval(a - b), n_val=len(ours))
        ci = (lambda key: f" [{out[key][0]:.3f}, {out[key][1]:.3f}]" if out[key] else "")
        test = "" if _missing(pick[self.test]) else f"; test {short} {pick[self.test]:.3f}"
        how = (f"95% paired bootstrap over {out['n_val']} validation examples" if out["n_val"]
               else "no per-example validation record: no intervals")
        out["cost"] = cost
        out["ratios"] = {key: float(pick[key] / baseline[key]) for key in ("peak_memory", "step_time", "trainable_params",
                                                                          "estimated_memory")
                         if _finite(_plain(pick[key])) and _finite(_plain(baseline[key])) and baseline[key] > 0}
        if cost != "trainable_params":
            out["text"] = self._savings_text(pick, baseline, out, how)
            return out
        out["text"] = (f"Recommended (within {eps:g} of all blocks): {pick['selector']}, blocks {pick['blocks']}, "
                       f"rank {_rank_text(pick['rank'])}: {int(pick['trainable_params']):,} trainable parameters "
                       f"({pick['pct_of_all_blocks']:.1f}% of all-block LoRA); val {short} {pick[val]:.3f}"
                       f"{ci('val_ci')} vs all blocks {baseline[val]:.3f}{ci('baseline_ci')}, difference "
                       f"{pick[val] - baseline[val]:+.3f}{ci('diff_ci')} ({how}){test}.")
        return out

    def _savings_text(self, pick, baseline, out: dict[str, Any], how: str) -> str:
        """What a recommendation by cost saves, as the issue's example has it: "blocks 18-29 at r8:
        0.52x memory, 0.61x step time of all blocks, val acc -0.4 points [-1.1, +0.3]"."""
        ratios = ", ".join(f"{value:.2f}x {RATIO_LABELS[key]}" for key, value in out["ratios"].items())
        diff = pick[self.val] - baseline[self.val]
        points = self.metric in ("acc", "exact_match")  # fractions: shown in percentage points
        unit = (lambda v: f"{100 * v:+.1f}") if points else (lambda v: f"{v:+.3f}")  # noqa: E731
        ci = f" [{unit(out['diff_ci'][0])}, {unit(out['diff_ci'][1])}]" if out["diff_ci"] else ""
        blocks = str(pick["blocks"]).split(" (")[0]
        return (f"Recommended by {RATIO_LABELS[out['cost']]} (within {out['eps']:g} of all blocks): {pick['selector']}, "
                f"blocks {blocks} at r{_rank_text(pick['rank'])}: {ratios} of all blocks, val {SHORT[self.metric]} "
                f"{unit(diff)}{' points' if points else ''}{ci} ({how}).")

    def front_table(self) -> str:
        """The front as a Markdown table (what ``pareto.md`` holds), a column for every objective."""
        front = self.pareto_front()
        name = SHORT[self.metric]
        extra = [cost for cost in self.costs if cost != "trainable_params"]
        lines = ["| selector | blocks | rank | trainable params | % of all-block LoRA | "
                 + "".join(f"{COST_LABELS[c]} | " for c in extra) + f"val {name} | test {name} "
                 "| train time (s) | checkpoint |", "|" + "---|" * (9 + len(extra))]
        for row in front.to_dict("records"):
            test = "" if _missing(row[self.test]) else f"{row[self.test]:.3f}"
            costs = "".join(f"{_cost_text(c, row[c])} | " for c in extra)
            lines.append(f"| {row['selector']} | {row['blocks']} | {_rank_text(row['rank'])} | {int(row['trainable_params']):,} "
                         f"| {row['pct_of_all_blocks']:.1f} | {costs}{row[self.val]:.3f} | {test} "
                         f"| {row['train_time_s']:.1f} | {row['checkpoint']} |")
        return "\n".join(lines) + "\n"

    def write(self) -> list[Path]:
        """``pareto.csv`` (every trial, a ``pareto`` column marks the front), ``pareto.md``, ``pareto.png``."""
        trials = self.trials.copy()
        trials["pareto"] = trials.index.isin(self.pareto_front().index)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths = [self.run_dir / "pareto.csv", self.run_dir / "pareto.md", self.run_dir / "pareto.png"]
        trials.to_csv(paths[0], index=False)
        paths[1].write_text(f"# Pareto front: {self.run_dir.name}\n\n{self.recommend()['text']}\n\n"
                            f"{'Maximise' if self.maximise else 'Minimise'} validation {LABELS[self.metric]}, "
                            + ", ".join(f"{'maximise' if self.goals[c] == 'max' else 'minimise'} {RATIO_LABELS[c]}"
                                        .replace("parameters", "trainable parameters") for c in self.costs)
                            + f"; {len(trials)} trials"
                            f"{_stopped_note(trials)}.\n\n"
                            + self.front_table())
        self.plot(paths[2])
        RunDir(self.run_dir, self.storage).sync(*(p.name for p in paths))
        return paths


def open_sweep(target: str | Path) -> RunDir:
    """A sweep from its local directory or its storage URI (then its report goes to the directory
    the sweep was started in, or to ``runs/NAME`` on a machine that does not have it)."""
    if is_remote(target):
        storage = Storage(target)
        if not storage.is_file("sweep.json"):
            raise ConfigError(f"{storage.uri} is not a raylsl sweep (no sweep.json); pass the URI `raylsl sweep` printed")
        local = storage.read_json("sweep.json").get("local_dir")
        if not local or not Path(local).parent.is_dir():  # another machine
            local = Path("runs") / Path(storage.uri).name
        return RunDir(Path(local), storage)
    local = Path(target).resolve()  # Ray's storage layer reads a relative path as a URI: nothing found
    if not (local / "sweep.json").is_file():
        raise ConfigError(f"{local} is not a raylsl sweep directory (no sweep.json and tune/); pass the "
                          f"folder that `raylsl sweep` printed")
    uri = Storage(local).read_json("sweep.json").get("storage_uri")
    return RunDir(local, Storage(uri) if uri and uri != str(local) else None)


def load(target: str | Path, objectives: Any = None) -> SweepReport:
    """The report of the sweep at ``target`` (finished or not); trials in the order Tune created them.

    Args:
        objectives: re-cut the front on these 2 or 3 recorded columns (``"val_acc,peak_memory"``,
            or as the space file's ``objectives:``) instead of the sweep's own; nothing is trained.

    Raises:
        ConfigError: an unknown objective, or one that no finished trial recorded.
    """
    import pandas as pd

    run = open_sweep(target)
    stopped = set(run.storage.read_json(SCHEDULER_STATE)["stopped"]) if run.storage.is_file(SCHEDULER_STATE) else set()
    settings = run.storage.read_json("sweep.json")
    metric = settings.get("metric", "acc")
    own = _objectives(metric, settings.get("objectives"))
    rows = [_trial_row(trial, run.storage, stopped, metric, own) for trial in tune_trials(run.storage)]
    trials = pd.DataFrame(rows, columns=columns(metric)).sort_values("trial", kind="stable").reset_index(drop=True)
    goals = own if objectives is None else _objectives(metric, objectives, "--objectives")
    done = trials[trials["status"] == "TERMINATED"]
    for key in goals:
        if not done.empty and not np.isfinite(done[key].to_numpy(dtype=float)).any():
            raise ConfigError(f"--objectives: no finished trial of {run.local.name} recorded {key} (a sweep from "
                              f"before costs were recorded has trainable_params only)")
    return SweepReport(run.local, trials, settings.get("trials"), run.storage, metric, goals)


TRIAL_DIR = re.compile(r".+?_(?P<trial_id>[0-9a-f]{8})_(?P<number>\d+)(?:_|$)")
"""A Tune trial directory's name: ``TRAINABLE_TRIALID_EXPERIMENTTAG_DATE``, the experiment tag
opening with the trial's number."""


@dataclass(frozen=True)
class TuneTrial:
    """One trial as its directory records it in JSON and text."""

    number: int
    """Its position in the sweep (1, 2, ...)."""
    trial_id: str
    params: dict[str, Any]
    """The sampled configuration (``params.json``)."""
    results: list[dict[str, Any]]
    """Every report, oldest first (``result.json``, one JSON object a line)."""
    error: str
    """The last line of ``error.txt``; empty when the trial did not fail."""
    checkpoint: str
    """URI of the checkpoint the last report carried (empty when it carried none)."""


def tune_trials(storage: Storage) -> list[TuneTrial]:
    """The trials of the sweep whose storage is ``storage``, from their directories in ``tune/``."""
    trials = []
    for name in storage.listdir("tune"):
        match = TRIAL_DIR.match(name)
        if match is None:  # the experiment's own state files
            continue
        rel = f"tune/{name}"
        params = storage.read_json(f"{rel}/params.json") if storage.is_file(f"{rel}/params.json") else {}
        results = _json_lines(storage.read_text(f"{rel}/result.json")) if storage.is_file(f"{rel}/result.json") else []
        error = ""
        if storage.is_file(f"{rel}/error.txt"):
            lines = [line for line in storage.read_text(f"{rel}/error.txt").strip().splitlines() if line.strip()]
            error = lines[-1] if lines else "failed"
        last = (results or [{}])[-1].get("checkpoint_dir_name")
        trials.append(TuneTrial(int(match["number"]), match["trial_id"], params, results, error,
                                storage.uri_of(f"{rel}/{last}") if last else ""))
    return trials


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a line a crash cut short is left out."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _curve(results: list[dict[str, Any]], key: str = "val_acc") -> str:
    """A trial's validation metric by step, as JSON ``[[step, value], ...]``: its evaluations
    during training (``train.eval_every``, the scheduler's rungs) and its final one."""
    return json.dumps([[int(r["step"]), round(float(r[key]), 6)] for r in results
                       if _finite(r.get(key)) and _finite(r.get("step"))])


def trial_number(experiment_tag: str) -> int:
    """A Tune trial's position in the sweep (1, 2, ...), from its experiment tag."""
    return int(str(experiment_tag).split("_")[0])


def _trial_row(trial: TuneTrial, storage: Storage, stopped=frozenset(), metric: str = "acc",
               goals: dict[str, str] | None = None) -> dict:
    """One trial: its status, config, last result, its costs, its curve and final checkpoint. A
    trial is finished when its last report is its final one with the sweep's objectives (``goals``)
    finite."""
    params = trial.params
    last = trial.results[-1] if trial.results else {}
    test = storage.read_json(f"test/{trial.trial_id}.json") if storage.is_file(f"test/{trial.trial_id}.json") else None
    finished = (not trial.error and all(_finite(last.get(k)) for k in goals or objectives(metric))
                and last.get("final") is not False)
    error = trial.error
    if last.get("infeasible"):  # refused by the fit check before it loaded anything
        status, error = INFEASIBLE, last.get("error", "")
    elif trial.error:
        status = "ERROR"
    elif finished:
        status = "TERMINATED"
    elif trial.trial_id in stopped:  # the scheduler stopped it: its metrics at that rung
        status = STOPPED
    else:  # still running, or interrupted with the sweep
        status = "RUNNING" if trial.results else "PENDING"
    selector = params.get("selector", "all")
    return {
        "trial": trial.number, "trial_id": trial.trial_id, "status": status,
        "selector": selector,
        "n": params.get("n") if selector != "all" else None, "rank": last.get("rank", params.get("lora.r")),
        "blocks": last.get("blocks", ""), "trainable_params": last.get("trainable_params", math.nan),
        "pct_of_all_blocks": last.get("pct_of_all_blocks", math.nan), f"val_{metric}": last.get(f"val_{metric}", math.nan),
        f"test_{metric}": test.get(metric, math.nan) if test else math.nan,
        "train_time_s": last.get("train_time_s", math.nan), "selection_time_s": last.get("selection_time_s", math.nan),
        **{key: last.get(key, math.nan) for key in RECORDED},
        "checkpoint": trial.checkpoint if finished else "", "params": json.dumps(params, sort_keys=True),
        "error": error, "curve": _curve(trial.results, f"val_{metric}"),
    }


def _rank_text(rank) -> str:
    """A LoRA rank as text: 8, not 8.0 (a column with a missing rank is float)."""
    return str(int(rank)) if _finite(_plain(rank)) and float(rank).is_integer() else str(rank)


def _cost_text(key: str, value) -> str:
    """A cost as the front table shows it: memory in MiB, time with its unit's precision."""
    if _missing(value):
        return ""
    if key.endswith("memory"):
        return f"{value / 2**20:,.0f}"
    return f"{value:.3f}" if key == "step_time" else f"{value:,.0f}"


def _stopped_note(trials) -> str:
    stopped = int((trials["status"] == STOPPED).sum())
    return f", {stopped} of them stopped early by the scheduler (not on the front)" if stopped else ""


def _per_example(checkpoint: str, metric: str = "acc") -> np.ndarray | None:
    """A finished trial's validation metric per example as ``(n, 2)`` (numerator, denominator) rows
    whose column sums' ratio is the metric (from ``results.json`` in its checkpoint): accuracy
    (hit, 1), exact match (hit, 1; (0, 0) for an example without a reference), loss (target NLL,
    target tokens), so a bootstrap resample's metric is exactly what evaluation would report."""
    if not checkpoint:
        return None
    storage = Storage(checkpoint)
    if not storage.is_file("results.json"):
        return None
    record = storage.read_json("results.json").get("after_per_example") or {}
    if metric == "loss" and "loss" in record and "tokens" in record:
        tokens = np.asarray(record["tokens"], dtype=float)
        return np.stack([np.asarray(record["loss"], dtype=float) * tokens, tokens], axis=1)
    if metric not in record:
        return None
    values = np.asarray([math.nan if v is None else v for v in record[metric]], dtype=float)
    scored = ~np.isnan(values)
    return np.stack([np.where(scored, values, 0.0), scored.astype(float)], axis=1)


def _ratio(rows: np.ndarray) -> np.ndarray:
    """The metric of each bootstrap resample (``rows``: resamples x examples x (numerator, denominator))."""
    totals = rows.sum(axis=1)
    return totals[:, 0] / np.maximum(totals[:, 1], 1e-12)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _count_label(value: float, _position=None) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
