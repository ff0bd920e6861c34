"""Fronts over what selection saves: on the same trials, the parameter front against the memory front.

    python benchmarks/sweep_cost_front.py            # SmolLM2-135M on sarcasm, benchmarks/sweep_cost_space.yaml
    python benchmarks/sweep_cost_front.py --smoke    # tiny-llama, 3 tiny trials: checks the script, measures nothing
    python benchmarks/sweep_cost_front.py --from-run runs/bench-cost-...   # summarise a finished sweep again
    python benchmarks/sweep_cost_front.py --from-run runs/bench-cost-... --repeats 3   # + run-to-run spread

Runs one 3-objective sweep (validation accuracy up, peak memory down, step time down) over block
sets that differ in position as well as count, then cuts the same trials twice: on (val acc,
trainable parameters) and on (val acc, peak memory). Prints both fronts, which trials sit on one
and not the other, and, for each parameter-front member, the memory and step time that the
memory front's best answer at equal or better accuracy needs (its ratio). Error bars: accuracy as
95% bootstrap intervals over the validation examples (`SweepReport.recommend`), step time as each
trial's interquartile range over its timed steps (``step_time_spread``); with ``--repeats K``, also
the run-to-run spread: three designed configurations (all blocks, the first and the last quarter,
r8) trained K more times each from the sweep's base config, their step times and peak memory
compared between runs. Writes
``benchmarks/sweep_cost_front.json`` and ``.png`` (the two fronts side by side) and
``sweep_cost_front_pairs.png`` (the sweep's own 3-objective pairwise projections).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from raylsl.report import SweepReport, load, pareto_mask
from raylsl.sweep.run import sweep

HERE = Path(__file__).parent
SPACE = HERE / "sweep_cost_space.yaml"


def run(space_path: Path, smoke: bool) -> Path:
    """The sweep; returns its directory (under ``runs/``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    space = yaml.safe_load(space_path.read_text())
    variant = Path("runs") / f"bench-cost-space-{stamp}.yaml"
    variant.parent.mkdir(exist_ok=True)
    variant.write_text(yaml.safe_dump({**space, "base": str((space_path.parent / space["base"]).resolve())},
                                      sort_keys=False))
    overrides = {"model": "tiny-llama", "data.val_size": 16} if smoke else None
    report = sweep(variant, overrides, smoke=smoke, output_dir="runs", name=f"bench-cost-{stamp}", progress=False)
    return report.run_dir


def fronts(report: SweepReport) -> dict:
    """The parameter front and the memory front of the same finished trials, and what moving from
    one to the other saves at equal accuracy."""
    done = report.trials[report.trials["status"] == "TERMINATED"].copy()
    acc = done["val_acc"].to_numpy(float)
    on = {}
    for cost in ("trainable_params", "peak_memory", "step_time"):
        on[cost] = set(done[pareto_mask(np.column_stack([acc, done[cost].to_numpy(float)]), ["max", "min"])]["trial_id"])
    three = set(done[pareto_mask(done[["val_acc", "peak_memory", "step_time"]].to_numpy(float),
                                 ["max", "min", "min"])]["trial_id"])
    saves = []
    for row in done[done["trial_id"].isin(on["trainable_params"])].itertuples():
        # the least memory at this accuracy or better: the memory front's answer to the same question
        rivals = done[done["val_acc"] >= row.val_acc]
        best = rivals.loc[rivals["peak_memory"].idxmin()]
        saves.append({"param_front": row.trial_id, "blocks": row.blocks, "rank": int(row.rank),
                      "val_acc": row.val_acc, "memory_front_pick": best["trial_id"], "pick_blocks": best["blocks"],
                      "pick_rank": int(best["rank"]), "pick_val_acc": float(best["val_acc"]),
                      "memory_ratio": float(best["peak_memory"] / row.peak_memory),
                      "step_time_ratio": float(best["step_time"] / row.step_time)})
    pairs = []  # equal parameters, different blocks: what the parameter count cannot tell apart
    for params, group in done.groupby("trainable_params"):
        if len(group) > 1:
            low, high = group.loc[group["peak_memory"].idxmin()], group.loc[group["peak_memory"].idxmax()]
            pairs.append({"trainable_params": int(params), "least_memory": f"{low['selector']} {low['blocks']}",
                          "most_memory": f"{high['selector']} {high['blocks']}",
                          "memory_ratio": float(low["peak_memory"] / high["peak_memory"]),
                          "estimated_memory_ratio": float(low["estimated_memory"] / high["estimated_memory"]),
                          "step_time_ratio": float(low["step_time"] / high["step_time"]),
                          "val_acc_diff": float(low["val_acc"] - high["val_acc"])})
    return {"equal_params_pairs": pairs, "param_front": sorted(on["trainable_params"]), "memory_front": sorted(on["peak_memory"]),
            "time_front": sorted(on["step_time"]), "three_objective_front": sorted(three),
            "only_param_front": sorted(on["trainable_params"] - on["peak_memory"]),
            "only_memory_front": sorted(on["peak_memory"] - on["trainable_params"]), "saves_at_equal_accuracy": saves}


def figure(report: SweepReport, cut: dict, path: Path) -> None:
    """Accuracy against parameters (parameter front ringed) beside accuracy against peak memory
    (memory front ringed), the same trials in both, accuracy with its 95% interval; step time by
    colour, a trial's interquartile range in its label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = report.trials[report.trials["status"] == "TERMINATED"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (cost, label, members) in zip(axes, [("trainable_params", "trainable parameters (M)", cut["param_front"]),
                                                   ("peak_memory", "peak memory (MiB)", cut["memory_front"])]):
        x = done[cost] / (1e6 if cost == "trainable_params" else 2**20)
        low = done["val_acc"] - done["val_ci_low"]
        high = done["val_ci_high"] - done["val_acc"]
        ax.errorbar(x, done["val_acc"], yerr=[low.fillna(0), high.fillna(0)], fmt="none", ecolor="grey", alpha=0.5)
        points = ax.scatter(x, done["val_acc"], c=done["step_time"], cmap="viridis", s=40, zorder=3)
        ring = done["trial_id"].isin(members)
        ax.scatter(x[ring], done["val_acc"][ring], facecolors="none", edgecolors="red", s=140, lw=1.5, zorder=4,
                   label=f"front on {cost}")
        for xi, row in zip(x, done.itertuples()):
            ax.annotate(f"{row.selector} {str(row.blocks).split(' (')[0]} r{int(row.rank)}", (xi, row.val_acc),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("validation accuracy (95% bootstrap interval)")
    fig.colorbar(points, ax=axes, label="step time (s, median after warm-up)")
    fig.suptitle(f"{report.run_dir.name}: the same {len(done)} trials, two fronts", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


REPEATED = {"all r8": {"selector": "all", "lora.r": 8}, "first 25% r8": {"selector": "first", "n": 0.25, "lora.r": 8},
            "last 25% r8": {"selector": "last", "n": 0.25, "lora.r": 8}}
"""What ``--repeats`` trains again: heuristic selectors (no scoring between runs), a designed pair."""


def repeat_runs(run_dir: Path, k: int) -> dict:
    """Each of `REPEATED` trained ``k`` times with the sweep's base config, one after another: the
    step time's run-to-run spread ((max - min) / median over the runs), against the differences
    between the configurations that a front ranks on."""
    from raylsl.config import load_config
    from raylsl.recipes.train import train

    out: dict = {}
    for name, overrides in REPEATED.items():
        runs = []
        for i in range(k):
            label = f"{name.replace(' ', '-').replace('%', 'pct')}-{i}"
            done = run_dir / "repeats" / label / "results.json"
            if done.is_file():  # a rerun keeps the repeats that finished
                costs = json.loads(done.read_text())["train"]["costs"]
            else:
                config = load_config(run_dir / "base_config.yaml",  # layers=all: the selector chooses, as in a trial
                                     {**overrides, "layers": "all", "output_dir": str(run_dir / "repeats"),
                                      "name": label})
                costs = train(config, progress=False)["train"]["costs"]
            runs.append({"step_time": costs["step_time"], "peak_memory": costs["peak_memory"],
                         "step_time_spread": costs.get("step_time_spread")})
            print(f"repeat {name} #{i}: step {costs['step_time']:.3f} s, peak {costs['peak_memory'] / 2**20:.0f} MiB", flush=True)
        times = [r["step_time"] for r in runs]
        out[name] = {"runs": runs, "step_time_median": float(np.median(times)),
                     "step_time_run_to_run": float((max(times) - min(times)) / np.median(times)),
                     "peak_memory_identical": len({r["peak_memory"] for r in runs}) == 1}
    return out


def intervals(report: SweepReport) -> SweepReport:
    """Each finished trial's 95% bootstrap interval of its validation accuracy (``val_ci_low``/``_high``)."""
    from raylsl.report import _interval, _per_example, _ratio

    rng = np.random.default_rng(0)
    lows, highs = [], []
    for row in report.trials.itertuples():
        record = _per_example(row.checkpoint) if row.status == "TERMINATED" else None
        if record is None or not len(record):
            lows.append(np.nan), highs.append(np.nan)
            continue
        low, high = _interval(_ratio(record[rng.integers(0, len(record), size=(2000, len(record)))]))
        lows.append(low), highs.append(high)
    report.trials["val_ci_low"], report.trials["val_ci_high"] = lows, highs
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(SPACE))
    parser.add_argument("--smoke", action="store_true", help="tiny-llama, 3 tiny trials: checks the script only")
    parser.add_argument("--from-run", metavar="SWEEP_DIR", help="summarise a finished sweep instead of running one")
    parser.add_argument("--eps", type=float, default=0.02, help="accuracy margin of the recommendations (default 0.02)")
    parser.add_argument("--repeats", type=int, default=0, metavar="K",
                        help="also train three designed configurations K times each: the run-to-run step-time spread")
    parser.add_argument("--machine", default="cpu (2 cores)", help="what the figures were measured on, for the JSON")
    args = parser.parse_args()
    started, load_start = time.perf_counter(), os.getloadavg()
    run_dir = Path(args.from_run) if args.from_run else run(Path(args.space), args.smoke)
    report = intervals(load(run_dir))
    cut = fronts(report)
    settings = json.loads((run_dir / "sweep.json").read_text())
    space = yaml.safe_load(Path(args.space).read_text())
    by_params = report.recommend(eps=args.eps)
    by_memory = report.recommend(eps=args.eps, cost="peak_memory")
    done = report.trials[report.trials["status"] == "TERMINATED"]
    out_json = HERE / ("sweep_cost_front_smoke.json" if args.smoke else "sweep_cost_front.json")
    keep = ["trial", "trial_id", "status", "selector", "blocks", "rank", "trainable_params", "val_acc", "val_ci_low",
            "val_ci_high", "peak_memory", "estimated_memory", "step_time", "step_time_spread", "tokens_per_second",
            "train_time_s"]
    complete = report.complete
    result = {
        "smoke": args.smoke, "finished_trials": int(len(done)), "complete": complete, "run_dir": str(run_dir),
        "device": args.machine,
        "budget": {"trials": settings["trials"], **{k: v for k, v in space["set"].items()},
                   "note": f"{len(done)} of {settings['trials']} planned trials finished, "
                           f"{space['set']['train.steps']} steps per trial, one at a time; accuracies after so few "
                           f"steps are early-training accuracies"
                           + ("" if complete else "; the sweep was interrupted (Ctrl-C), the unfinished trials are "
                              "not counted")},
        "wall_time_s": settings.get("wall_time_s"), "benchmark_wall_s": time.perf_counter() - started,
        "peak_memory_source": "torch_live_bytes (weights + the warm-up steps' peak of live tensor bytes)",
        "trials": json.loads(done[keep].to_json(orient="records")),
        "failed": int(len(report.trials) - len(done)), **cut,
        "step_time_spread_median": float(done["step_time_spread"].median()),
        "recommend_by_params": by_params["text"], "recommend_by_memory": by_memory["text"],
        "front_md": report.front_table(),
    }
    if args.repeats:
        result["repeats"] = repeat_runs(run_dir, args.repeats)
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    out_json.write_text(json.dumps(result, indent=2))
    if not args.smoke:
        figure(report, cut, HERE / "sweep_cost_front.png")
        shutil.copyfile(run_dir / "pareto.png", HERE / "sweep_cost_front_pairs.png")
    print(f"{'trial':>5} {'selector':>10} {'blocks':>14} {'r':>2} {'params':>9} {'val acc':>7} {'95% CI':>13} "
          f"{'peak MiB':>8} {'est MiB':>8} {'step s':>7} {'IQR':>5}")
    for row in done.itertuples():
        print(f"{row.trial:>5} {row.selector:>10} {str(row.blocks):>14} {int(row.rank):>2} {int(row.trainable_params):>9,} "
              f"{row.val_acc:7.3f} [{row.val_ci_low:.3f},{row.val_ci_high:.3f}] {row.peak_memory / 2**20:8.0f} "
              f"{row.estimated_memory / 2**20:8.0f} {row.step_time:7.3f} {row.step_time_spread:5.0%}")
    print(f"parameter front: {cut['param_front']}\nmemory front:    {cut['memory_front']}")
    print(f"only on the parameter front: {cut['only_param_front']}; only on the memory front: {cut['only_memory_front']}")
    for s in cut["saves_at_equal_accuracy"]:
        print(f"  {s['blocks']} r{s['rank']} (acc {s['val_acc']:.3f}) -> {s['pick_blocks']} r{s['pick_rank']} "
              f"(acc {s['pick_val_acc']:.3f}): {s['memory_ratio']:.2f}x memory, {s['step_time_ratio']:.2f}x step time")
    for p in cut["equal_params_pairs"]:
        print(f"  {p['trainable_params']:,} parameters: {p['least_memory']} vs {p['most_memory']}: "
              f"{p['memory_ratio']:.2f}x memory (estimate {p['estimated_memory_ratio']:.2f}x), "
              f"{p['step_time_ratio']:.2f}x step time, val acc {100 * p['val_acc_diff']:+.1f} points")
    print(by_params["text"])
    print(by_memory["text"])
    for name, r in result.get("repeats", {}).items():
        print(f"  {name}: median step {r['step_time_median']:.3f} s over {len(r['runs'])} runs, run-to-run spread "
              f"{r['step_time_run_to_run']:.0%}, peak memory identical: {r['peak_memory_identical']}")
    print(f"wrote {out_json}")


if __name__ == "__main__":
    main()
