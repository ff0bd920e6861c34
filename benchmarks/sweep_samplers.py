"""Optuna's samplers at 40+ trials, each with Pareto halving: TPE vs NSGA-II vs random (CPU, ~1 h per sampler).

    python benchmarks/sweep_samplers.py [--trials 40] [--samplers tpe,nsga2,random]   # runs; resumes
    python benchmarks/sweep_samplers.py --summarise                                    # table only

Each sampler runs the same space (``benchmarks/sweep_space.yaml``: SmolLM2 + sarcasm, 40 steps x 8
per trial), seed and number of trials with ``scheduler: pareto_halving`` (eta 3; rung evaluations
on the first ``--eval-subset`` validation examples), which is what makes 40+ trials affordable here.
The sweeps are ``runs/bench-samplers-<sampler>-<trials>``: a rerun skips a finished sweep and
resumes an interrupted one (``resume_sweep``: finished trials kept), so the hours can be run in
pieces. NSGA-II uses the sweep's default generation size (an eighth of the trials).

For each sampler the table gives the trials finished, stopped early and failed, the wall time, and
the hypervolume of the front of finished trials (over validation accuracy and -trainable
parameters / all blocks at the highest rank, reference (0.5, -1.1), as ``sweep_pareto.py``): at the
end, at the shortest sweep's wall time (equal wall-clock budget), and after the first K trials.
Wall times come from Tune's timestamps, so a sweep that was interrupted and resumed counts the gap:
compare it by K, not by time. It also measures how well each rung's evaluation (accuracy, loss)
predicted the final validation accuracy of the trials that finished (``rung_signal``). Writes
``benchmarks/sweep_samplers.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from raylsl.report import load
from raylsl.sweep.run import resume_sweep, sweep
from sweep_halving import hypervolume_at, summarise, variant_space  # (benchmarks/ is on the path as a script)
from sweep_pareto import _all_blocks_params, hypervolume_after_each_trial

HERE = Path(__file__).parent
OUT = HERE / "sweep_samplers.json"
SAMPLERS = ("tpe", "nsga2", "random")


def sweep_dir(args, sampler: str) -> Path:
    return Path(args.output_dir).resolve() / f"bench-samplers-{sampler}-{args.trials}"  # Tune needs it absolute


def run_or_resume(args, space: dict, sampler: str) -> Path:
    run_dir = sweep_dir(args, sampler)
    if (run_dir / "sweep.json").is_file():
        if not load(run_dir).complete:
            print(f"{sampler}: resuming {run_dir}", flush=True)
            resume_sweep(run_dir, progress=args.progress)
        return run_dir
    variant = variant_space(args.space, space, f"{run_dir.name}-space", args.eval_subset, sampler=sampler,
                            scheduler="pareto_halving")
    print(f"{sampler}: {args.trials} trials into {run_dir}", flush=True)
    return sweep(variant, trials=args.trials, output_dir=args.output_dir, name=run_dir.name,
                 progress=args.progress).run_dir


def hypervolume_after_k(trials, max_params: float, ks: list[int]) -> dict[int, float]:
    """Hypervolume of the finished trials among the first K Tune created (stopped ones are not on a
    front: their accuracy is a rung's, on a subset)."""
    finished = trials.assign(val_acc=trials["val_acc"].where(trials["status"] == "TERMINATED"))
    curve = hypervolume_after_each_trial(finished, max_params)
    return {k: curve[min(k, len(curve)) - 1] if curve else 0.0 for k in ks}


def proposals_answered(run_dir: Path, trials: int) -> int:
    """Proposals the sweep answered from an earlier trial instead of training (repeats): the study
    exported to ``optuna.db`` holds every proposal, Tune only the trained ones."""
    import optuna

    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    name = optuna.get_all_study_summaries(storage)[0].study_name
    return len(optuna.load_study(study_name=name, storage=storage).trials) - trials


def _reports(trial: Path) -> list[dict]:
    """A Tune trial's reports, from its ``result.json`` (one JSON object a line)."""
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


def _spearman(name: str, x, y, rng) -> dict:
    """Spearman's rho of ``x`` with ``y`` and its 95% bootstrap interval (None where undefined)."""
    import numpy as np
    from scipy.stats import spearmanr

    rho = spearmanr(x, y).statistic
    draws = [spearmanr(x[i], y[i]).statistic for i in (rng.integers(0, len(x), len(x)) for _ in range(2000))]
    draws = [d for d in draws if np.isfinite(d)]
    return {f"spearman_{name}": None if not np.isfinite(rho) else float(rho),
            f"spearman_{name}_95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
            if draws else None}


def rung_signal(run_dirs: dict[str, Path], seed: int = 0) -> dict[str, dict]:
    """How well each rung's evaluation predicted a finished trial's final validation accuracy, over
    the distinct configurations that ran to the end in any of the sweeps: per rung step, the number
    of distinct accuracies there, and Spearman's rho of the rung's accuracy and loss with the final
    accuracy (with a 95% bootstrap interval over configurations); then the same for the trainable
    parameters, which is what decides a rung where the accuracy ties. Read from Tune's ``result.json``."""
    import numpy as np

    runs: dict[str, tuple[dict, dict]] = {}  # params.json -> (its rung reports by step, its final report)
    for run_dir in run_dirs.values():
        for trial in sorted((run_dir / "tune").glob("run_trial_*")):
            reports = _reports(trial)
            final = [r for r in reports if r.get("final")]
            key = (trial / "params.json").read_text()
            if final and key not in runs:
                runs[key] = ({r["step"]: r for r in reports if r.get("final") is False}, final[-1])
    rng = np.random.default_rng(seed)
    out = {}
    for step in sorted({step for rungs, _ in runs.values() for step in rungs}):
        table = np.array([(rungs[step]["val_acc"], rungs[step]["val_loss"], final["val_acc"])
                          for rungs, final in runs.values() if step in rungs], dtype=float)
        out[f"step {step}"] = {"configurations": len(table), "distinct_val_acc": len(np.unique(table[:, 0])),
                               **_spearman("val_acc", table[:, 0], table[:, 2], rng),
                               **_spearman("val_loss", table[:, 1], table[:, 2], rng)}
    table = np.array([(final["trainable_params"], final["val_acc"]) for _, final in runs.values()], dtype=float)
    out["trainable_params"] = {"configurations": len(table), "distinct_val_acc": len(np.unique(table[:, 0])),
                               **_spearman("trainable_params", table[:, 0], table[:, 1], rng)}
    return out


def replay_first_rung(run_dir: Path) -> dict[str, int]:
    """The first rung's decisions made again by today's `ParetoHalving` on the reports the sweep
    recorded there, in trial order: how many trials it stops, against the sweep's own record (a
    sweep run before a change to the scheduler shows what the change would have decided). The
    replay without the loss tie-break must reproduce the record: that checks the replay."""
    import io
    import tempfile
    from contextlib import redirect_stdout

    from ray.tune.schedulers import TrialScheduler

    from raylsl.sweep.scheduler import ParetoHalving

    settings = json.loads((run_dir / "sweep.json").read_text())
    state = json.loads((run_dir / "scheduler.json").read_text())
    first = min(state["records"], key=float)
    trials = []
    for trial in (run_dir / "tune").glob("run_trial_*"):
        _, _, trial_id, number, *_ = trial.name.split("_")  # run_trial_<id>_<number>_...
        report = next((r for r in _reports(trial) if r.get("final") is False and r["fraction"] + 1e-9 >= float(first)), None)
        trials.append((int(number), trial_id, json.loads((trial / "params.json").read_text()), report))

    def replay(tiebreak: bool) -> set[str]:
        with tempfile.TemporaryDirectory() as tmp, redirect_stdout(io.StringIO()):
            scheduler = ParetoHalving(settings["eta"], settings["rungs"], settings.get("baseline"), tmp,
                                      settings.get("metric", "acc"))
            scheduler.tiebreak = scheduler.tiebreak if tiebreak else None
            return {trial_id for _, trial_id, config, report in sorted(trials, key=lambda t: t[0])
                    if report is not None and scheduler.decide(trial_id, config, report) == TrialScheduler.STOP}

    recorded, replayed = {t for t, rung in state["stopped"].items() if rung == first}, replay(tiebreak=True)
    return {"recorded": len(recorded), "replayed": len(replayed), "both": len(recorded & replayed),
            "replay_without_loss_matches_record": replay(tiebreak=False) == recorded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--eval-subset", type=int, default=100)
    parser.add_argument("--space", default=str(HERE / "sweep_space.yaml"))
    parser.add_argument("--output-dir", default="runs")
    parser.add_argument("--summarise", action="store_true", help="summarise the sweeps that exist; run nothing")
    parser.add_argument("--progress", action="store_true", help="print each trial's steps while it runs")
    parser.add_argument("--json", default=str(OUT), help="where the table goes (default %(default)s)")
    args = parser.parse_args()
    space = yaml.safe_load(Path(args.space).read_text())
    samplers = args.samplers.split(",")
    if args.summarise:
        run_dirs = {s: sweep_dir(args, s) for s in samplers if (sweep_dir(args, s) / "sweep.json").is_file()}
    else:
        run_dirs = {s: run_or_resume(args, space, s) for s in samplers}
    max_params = _all_blocks_params(args.space, space)
    results = {s: summarise(d, max_params) for s, d in run_dirs.items()}
    budget = min(r["wall_time_s"] for r in results.values())
    ks = sorted({k for k in (10, 20, 30, 40, 60, 80, args.trials) if k <= args.trials})
    for s, d in run_dirs.items():
        report, r = load(d), results[s]
        r["complete"] = report.complete
        r["hypervolume_at_equal_budget"] = hypervolume_at(report.trials, r.pop("ends"), budget, max_params)
        r["hypervolume_after_k"] = hypervolume_after_k(report.trials, max_params, ks)
        r["proposals_answered_without_training"] = proposals_answered(d, r["trials"])
        r["first_rung_stops"] = replay_first_rung(d)
    results.update(equal_budget_s=budget, max_params=max_params, trials_requested=args.trials,
                   eval_subset=args.eval_subset, rung_signal=rung_signal(run_dirs))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"{'sampler':>8} {'trials':>6} {'finished':>8} {'stopped':>7} {'failed':>6} {'wall (min)':>10} "
          f"{'HV end':>7} {'HV @ ' + format(budget / 60, '.1f') + ' min':>12} "
          + " ".join(f"{'HV@' + str(k):>7}" for k in ks) + f" {'repeats':>7}")
    for s in run_dirs:
        r = results[s]
        print(f"{s:>8} {r['trials']:>6} {r['finished']:>8} {r['stopped_early']:>7} {r['failed']:>6} "
              f"{r['wall_time_s'] / 60:>10.1f} {r['hypervolume_end']:>7.4f} {r['hypervolume_at_equal_budget']:>12.4f} "
              + " ".join(f"{r['hypervolume_after_k'][k]:>7.4f}" for k in ks)
              + f" {r['proposals_answered_without_training']:>7}" + ("" if r["complete"] else "  (incomplete)"))
    print("first rung's stops, recorded / replayed by today's scheduler / in both: "
          + ", ".join(f"{s} {r['first_rung_stops']['recorded']} / {r['first_rung_stops']['replayed']} / "
                      f"{r['first_rung_stops']['both']}" for s, r in ((s, results[s]) for s in run_dirs)))
    print("rung -> final validation accuracy, over the distinct configurations that finished "
          "(Spearman's rho, 95% bootstrap interval):")
    for rung, r in results["rung_signal"].items():
        names = [name for name in ("val_acc", "val_loss", "trainable_params") if f"spearman_{name}" in r]
        print(f"  {rung}: {r['configurations']} configurations, {r['distinct_val_acc']} distinct values; "
              + "; ".join(f"{name} {_rho(r, name)}" for name in names))
    print(f"wrote {args.json}")


def _rho(entry: dict, name: str) -> str:
    rho, interval = entry[f"spearman_{name}"], entry[f"spearman_{name}_95"]
    return "undefined (constant)" if rho is None else f"{rho:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


if __name__ == "__main__":
    main()
