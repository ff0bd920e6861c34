"""Pareto halving against running every trial to its end: the same sweep twice (CPU).

    python benchmarks/sweep_halving.py [--trials 16] [--space benchmarks/sweep_space.yaml]
    python benchmarks/sweep_halving.py --from-runs NONE_DIR HALVING_DIR   # summarise again
    python benchmarks/sweep_halving.py --arm pareto_halving               # one arm only

Runs the space with the same sampler (TPE), seed and number of trials twice: ``scheduler: none``,
then ``scheduler: pareto_halving`` (eta 3, rungs at 1/9 and 1/3 of a trial's steps, each rung an
evaluation on the first ``--eval-subset`` validation examples). For each it records the trials that
finished, were stopped or failed, Tune's wall time, and the hypervolume of the front of the trials
finished by time t (t from the first trial's start; the up-front scoring, the same for both, is
not counted). The comparison at equal wall-clock budget is the hypervolume of both at the shorter
sweep's wall time; the table also gives both at the end. Hypervolume is over (validation accuracy,
-trainable parameters / all blocks at the highest rank), reference (0.5, -1.1), as in
``sweep_pareto.py``; stopped trials are not on a front (their accuracy is a rung's, on a subset).
Writes ``benchmarks/sweep_halving.json``; the sweeps stay under ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from raylsl.report import hypervolume_2d, load
from raylsl.sweep.run import sweep

HERE = Path(__file__).parent
OUT = HERE / "sweep_halving.json"
ARMS = ("none", "pareto_halving")


def finish_times(run_dir: Path) -> dict[str, float]:
    """Seconds from the sweep's first trial start to each trial's last result (Tune's timestamps)."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run_dir / "tune"))
    frames = {tid: df for tid, df in analysis.trial_dataframes.items() if len(df) and "timestamp" in df}
    start = min(float((df["timestamp"] - df["time_total_s"]).min()) for df in frames.values())
    return {tid: float(df["timestamp"].max()) - start for tid, df in frames.items()}


def hypervolume_at(trials, ends: dict[str, float], t: float, max_params: float) -> float:
    done = trials[(trials["status"] == "TERMINATED") & trials["trial_id"].map(lambda i: ends.get(i, np.inf) <= t)]
    points = np.column_stack([done["val_acc"].to_numpy(float), -done["trainable_params"].to_numpy(float) / max_params])
    return hypervolume_2d(points, (0.5, -1.1)) if len(points) else 0.0


def summarise(run_dir: Path, max_params: float) -> dict:
    report = load(run_dir)
    trials = report.trials
    ends = finish_times(run_dir)
    wall = max(ends.values())
    grid = np.linspace(0, wall, 21)
    status = trials["status"].value_counts().to_dict()
    return {
        "run_dir": str(run_dir), "wall_time_s": wall, "trials": len(trials),
        "finished": status.get("TERMINATED", 0), "stopped_early": status.get("STOPPED_EARLY", 0),
        "failed": status.get("ERROR", 0), "hypervolume_end": hypervolume_at(trials, ends, wall, max_params),
        "hypervolume_curve": [[float(t), hypervolume_at(trials, ends, t, max_params)] for t in grid],
        "train_time_s": float(trials["train_time_s"].fillna(0).sum()), "ends": ends,
        "front_md": report.front_table(),
        "trials_table": json.loads(trials.drop(columns=["params"]).to_json(orient="records")),
    }


def variant_space(space_path: str, space: dict, name: str, eval_subset: int, **settings) -> Path:
    """``runs/<name>.yaml``: the space with its base made absolute, rung evaluations on the first
    ``eval_subset`` validation examples, and ``settings`` (sampler, scheduler) on top."""
    variant = Path("runs") / f"{name}.yaml"
    variant.parent.mkdir(exist_ok=True)
    base = (Path(space_path).parent / space["base"]).resolve()
    fixed = {**space.get("set", {}), "train.eval_subset": eval_subset}
    variant.write_text(yaml.safe_dump({**space, "base": str(base), "set": fixed, **settings}, sort_keys=False))
    return variant


def run_sweeps(args, space: dict) -> dict[str, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dirs = {}
    for arm in [args.arm] if args.arm else ARMS:
        variant = variant_space(args.space, space, f"bench-halving-space-{arm}-{stamp}", args.eval_subset,
                                sampler="tpe", scheduler=arm)
        report = sweep(variant, trials=args.trials, output_dir="runs", name=f"bench-halving-{arm}-{stamp}",
                       progress=False)
        run_dirs[arm] = report.run_dir
    return run_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--eval-subset", type=int, default=100)
    parser.add_argument("--space", default=str(HERE / "sweep_space.yaml"))
    parser.add_argument("--from-runs", nargs=2, metavar=("NONE_DIR", "HALVING_DIR"))
    parser.add_argument("--arm", choices=ARMS, help="run this arm only and print its directory (the two are "
                                                     "then summarised with --from-runs)")
    args = parser.parse_args()
    space = yaml.safe_load(Path(args.space).read_text())
    if args.arm:
        print(run_sweeps(args, space)[args.arm])
        return
    run_dirs = dict(zip(ARMS, map(Path, args.from_runs))) if args.from_runs else run_sweeps(args, space)
    from sweep_pareto import _all_blocks_params  # (benchmarks/ is on the path when run as a script)

    max_params = _all_blocks_params(args.space, space)
    results = {arm: summarise(run_dir, max_params) for arm, run_dir in run_dirs.items()}
    budget = min(r["wall_time_s"] for r in results.values())
    for arm, run_dir in run_dirs.items():
        r = results[arm]
        r["hypervolume_at_equal_budget"] = hypervolume_at(load(run_dir).trials, r.pop("ends"), budget, max_params)
    results.update(equal_budget_s=budget, max_params=max_params, trials_requested=args.trials,
                   eval_subset=args.eval_subset)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"{'scheduler':>15} {'trials':>6} {'finished':>8} {'stopped':>7} {'failed':>6} {'wall (min)':>10} "
          f"{'HV end':>7} {'HV @ ' + format(budget / 60, '.1f') + ' min':>12}")
    for arm in ARMS:
        r = results[arm]
        print(f"{arm:>15} {r['trials']:>6} {r['finished']:>8} {r['stopped_early']:>7} {r['failed']:>6} "
              f"{r['wall_time_s'] / 60:>10.1f} {r['hypervolume_end']:>7.4f} {r['hypervolume_at_equal_budget']:>12.4f}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
