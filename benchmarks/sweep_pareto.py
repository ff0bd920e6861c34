"""A real sweep on SmolLM2 + sarcasm (CPU), and what the search buys over random search.

    python benchmarks/sweep_pareto.py [--trials 16] [--space benchmarks/sweep_space.yaml]

Runs the space twice with the same trial budget and seed: Optuna's multi-objective TPE, then
Optuna's random sampler. Prints the TPE front, the sweep's wall time and the share of it spent on
selection (static scores computed once up front, plus each trial's cache reads), and the
hypervolume of each sampler's front after K trials (trials in the order Tune created them). Hypervolume is taken over (validation accuracy,
-trainable parameters / the largest possible count: all blocks at the highest rank in the space),
with the reference point (0.5 = chance on this binary task, -1.1). Writes
``benchmarks/sweep_pareto.json`` and ``benchmarks/sweep_pareto.png`` (the TPE sweep's plot); the
sweep directories stay under ``runs/``; ``--from-runs TPE_DIR RANDOM_DIR`` summarises two finished
sweeps again without rerunning them. The wall time is Tune's (trials, their start-up and the search);
the up-front scoring is added to it for the selection share.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from raylsl.report import hypervolume_2d, load
from raylsl.sweep.run import evaluate_front, sweep

HERE = Path(__file__).parent
OUT = HERE / "sweep_pareto.json"


def hypervolume_after_each_trial(trials, max_params: float) -> list[float]:
    """Hypervolume of the front of the first K finished trials, K = 1..len(trials)."""
    points = np.column_stack([trials["val_acc"].to_numpy(float), -trials["trainable_params"].to_numpy(float) / max_params])
    # hypervolume_2d skips dominated points and NaN rows (failed trials) itself.
    return [hypervolume_2d(points[:k], (0.5, -1.1)) for k in range(1, len(points) + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--space", default=str(HERE / "sweep_space.yaml"))
    parser.add_argument("--from-runs", nargs=2, metavar=("TPE_DIR", "RANDOM_DIR"),
                        help="summarise two finished sweeps instead of running them")
    args = parser.parse_args()
    space = yaml.safe_load(Path(args.space).read_text())
    run_dirs = dict(zip(("tpe", "random"), map(Path, args.from_runs))) if args.from_runs else run_sweeps(args, space)
    max_params = _all_blocks_params(args.space, space)
    results = {sampler: summarise(run_dir, max_params) for sampler, run_dir in run_dirs.items()}
    results["max_params"] = max_params
    shutil.copyfile(run_dirs["tpe"] / "pareto.png", HERE / "sweep_pareto.png")
    OUT.write_text(json.dumps(results, indent=2))
    tpe, rnd = results["tpe"], results["random"]
    print(tpe["front_md"])
    for name, row in (("tpe", tpe), ("random", rnd)):
        print(f"{name:>6}: {row['trials']} trials ({row['failed']} failed) in {row['wall_time_s'] / 60:.1f} min; "
              f"selection {row['selection_upfront_s']:.0f} s up front + {row['selection_in_trials_s']:.1f} s in "
              f"trials = {100 * row['selection_share']:.1f}% of the wall time")
    print(f"{'K':>3} {'HV tpe':>8} {'HV random':>10}")
    for k, (a, b) in enumerate(zip(tpe["hypervolume_after_k"], rnd["hypervolume_after_k"]), start=1):
        print(f"{k:>3} {a:8.4f} {b:10.4f}")
    print(f"wrote {OUT}")


def run_sweeps(args, space: dict) -> dict[str, Path]:
    """The same space, budget and seed with each sampler; returns the sweep directories."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dirs = {}
    for sampler in ("tpe", "random"):
        variant = Path("runs") / f"bench-space-{sampler}-{stamp}.yaml"
        variant.parent.mkdir(exist_ok=True)
        base = (Path(args.space).parent / space["base"]).resolve()
        variant.write_text(yaml.safe_dump({**space, "base": str(base), "sampler": sampler}, sort_keys=False))
        report = sweep(variant, trials=args.trials, output_dir="runs", name=f"bench-sweep-{sampler}-{stamp}",
                       progress=False)
        run_dirs[sampler] = report.run_dir
    return run_dirs


def summarise(run_dir: Path, max_params: float) -> dict:
    """One sweep's figures: its front (test accuracy filled in), time split and hypervolume curve."""
    report = evaluate_front(load(run_dir))
    report.write()
    settings = json.loads((run_dir / "sweep.json").read_text())
    trials = report.trials
    done = trials[trials["status"] == "TERMINATED"]
    upfront = sum(settings["selection"].values())
    in_trials = float(done["selection_time_s"].sum())
    return {
        "run_dir": str(run_dir), "wall_time_s": settings["wall_time_s"], "trials": len(trials),
        "failed": len(trials) - len(done), "selection_upfront_s": upfront,
        "selection_upfront_per_selector_s": settings["selection"], "selection_in_trials_s": in_trials,
        "selection_share": (upfront + in_trials) / (settings["wall_time_s"] + upfront),
        "train_time_s": float(done["train_time_s"].sum()),
        "hypervolume_after_k": hypervolume_after_each_trial(trials, max_params),
        "trials_table": json.loads(trials.drop(columns=["params"]).to_json(orient="records")),
        "front": json.loads(report.pareto_front().drop(columns=["params"]).to_json(orient="records")),
        "front_md": report.front_table(),
    }


def _all_blocks_params(space_path: str, space: dict) -> float:
    """Trainable parameters of LoRA on every block at the space's highest rank (its largest point);
    ``base`` is relative to the space file, as the sweep reads it."""
    from raylsl.assemble import assemble_here
    from raylsl.lora import count_trainable
    from raylsl.plan import load_run_config

    rank = max(space["parameters"]["lora.r"]["choices"])
    config = load_run_config(str((Path(space_path).parent / space["base"]).resolve()), {"layers": "all", "lora.r": rank})
    return float(count_trainable(assemble_here(config).model)["trainable"])


if __name__ == "__main__":
    main()
