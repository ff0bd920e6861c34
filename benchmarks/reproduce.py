"""Does choosing blocks work? The seeds' claims at budgets where an answer means something.

    python benchmarks/reproduce.py --budget cpu [--rows encoder,decoder] [--seeds 0,1]   # run (resumes)
    python benchmarks/reproduce.py --budget cpu --table                                # assemble
    python benchmarks/reproduce.py --budget paper --estimate                           # GPU-hours
    python benchmarks/reproduce.py --budget gpu --jobs 12                              # one GPU lease

A grid is rows of arms (a selector and its budget) x seeds. Every configuration writes its own JSON
(``benchmarks/reproduce/<budget>/<row>/<arm>-s<seed>.json``: settings, test metrics before and
after, the per-example test record, the validation curve, times) as soon as it finishes, and a
rerun skips those that exist, so a long grid survives interruption. ``--table`` assembles
whatever exists into ``benchmarks/reproduce/<budget>.md`` and ``.json``, with a verdict per claim.

Rules: the test split is evaluated once per configuration, after training (``eval_split: test``);
selection and the learning curves see train and validation only. A seed varies the adapter's
initialisation, the data order and the calibration draw together (``train.seed``,
``calibration.seed``); the split (``data.seed``) and the random selector's fixed block set stay
the same, so every arm is tested on the same examples and paired comparisons are possible.

Budgets:
  cpu    sized to this 2-core machine (MiniLM ~2.6 s per step at batch 32, SmolLM2 ~4-6 s at 16).
  paper  the seeds' own budgets, for a GPU: 3 seeds, every selector at 25% and 50%; epochs,
         learning rates and ranks after the papers' scripts (see PAPER below).
  gpu    the encoder row at a budget one short GPU lease affords (~10 minutes): more data, more
         steps and the paper budget's rank and learning rate, all configurations at once.
  gpu-long     the encoder row on all of sarcasm's train split, 3 seeds, plus arms at 33%.
  gpu-decoder  the cpu budget's decoder row (600 steps x 16) with 3 seeds, all at once on one GPU.

``--jobs N`` runs N configurations at once, each in its own process. On a GPU these small models
are bound by kernel launches and Python, not by the GPU, so N processes give nearly N times the
throughput; on a 2-core CPU leave it at 1.

Verdicts (``claims``): a difference between two arms is the mean over seeds of their test-metric
difference, with a 95% interval from a paired bootstrap over test examples (resampled jointly for
all seeds). "reproduced" when the interval lies on the claim's side of its margin, "not reproduced"
when it lies on the other side, "undecided at this budget" when it straddles.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE / "reproduce"


@dataclass(frozen=True)
class Row:
    name: str
    what: str
    base: dict
    arms: dict[str, dict]
    seeds: tuple[int, ...]
    step_s: float = 0.0
    """Estimated seconds per optimizer step on the budget's machine (for --estimate)."""
    optional: bool = False
    """Run only when named in --rows (the issue's "if the machine time allows")."""


def _arms(selectors: tuple[str, ...], fractions: tuple[float, ...]) -> dict[str, dict]:
    arms = {"all": {"layers": "all"}}
    for fraction in fractions:
        for name in selectors:
            key = {"ist": "ist.n_update", "lisa": "lisa.n_active"}.get(name)
            arms[f"{name} {fraction:.0%}"] = {"selector": name, "layers": "all",
                                              **({key: fraction} if key else {"n": fraction})}
    return arms


ENCODER_CPU = {"model": "minilm-l6", "task": "sarcasm", "data.train_size": 2000, "data.val_size": 200,
               "data.test_size": 500, "data.max_length": 64, "lora.r": 8, "lora.alpha": 16, "train.batch_size": 32,
               "train.steps": 189, "train.lr": 1e-3, "train.warmup_steps": 10, "train.eval_every": 21,
               "train.eval_subset": 200, "train.checkpoint_every": 0}
"""MiniLM on 2,000 sarcasm headlines: 3 epochs of 63 steps at batch 32, validation every third of an epoch."""
DECODER_CPU = {"model": "smollm2-135m", "task": "sarcasm", "data.val_size": 200, "data.test_size": 500,
               "data.max_length": 64, "lora.r": 8, "lora.alpha": 16, "train.batch_size": 16, "train.steps": 600,
               "train.lr": 5e-4, "train.warmup_steps": 30, "train.eval_every": 60, "train.eval_subset": 200,
               "train.checkpoint_every": 60, "ist.interval": 10, "lisa.interval": 20}
"""SmolLM2 on sarcasm at 10x the 60 steps of the tables in docs/results.md."""
MATH_CPU = {"model": "smollm2-135m", "task.name": "arithmetic", "task.max_new_tokens": 40, "data.val_size": 100,
            "data.test_size": 300, "data.max_length": 96, "lora.r": 8, "lora.alpha": 16, "train.batch_size": 8,
            "train.steps": 300, "train.lr": 5e-4, "train.warmup_steps": 10, "train.eval_every": 50,
            "train.eval_subset": 50, "train.checkpoint_every": 0}

DECODER_ARMS = {"all": {"layers": "all"}, "ist 25%": {"selector": "ist", "ist.n_update": 0.25, "layers": "all"},
                "lisa 25%": {"selector": "lisa", "lisa.n_active": 0.25, "layers": "all"},
                "random 25%": {"selector": "random", "n": 0.25, "layers": "all"}}
"""IST's Table 4 comparison: all blocks, and a quarter of them per step chosen by IST, LISA or at random."""

STATIC = ("cka", "activation", "gradient", "first", "last", "random")
GRIDS: dict[str, list[Row]] = {
    "cpu": [
        Row("encoder", "MiniLM-L6 (6 blocks), sarcasm, 2,000 train examples, 3 epochs (189 steps x 32)",
            ENCODER_CPU, {"all": {"layers": "all"}, **{f"{s} 50%": {"selector": s, "n": 3, "layers": "all"}
                                                         for s in ("cka", "activation", "first", "last", "random")}},
            (0, 1), step_s=2.6),
        Row("decoder", "SmolLM2-135M (30 blocks), sarcasm, 600 steps x 16",
            DECODER_CPU, DECODER_ARMS, (0,), step_s=5.0),
        Row("decoder-more", "SmolLM2-135M, sarcasm, 600 steps x 16: a static selector at 50% and Flexora",
            DECODER_CPU, {"cka 50%": {"selector": "cka", "n": 0.5, "layers": "all"},
                          "flexora 50%": {"selector": "flexora", "n": 0.5, "layers": "all"}}, (0,), step_s=5.0,
            optional=True),
        Row("math", "SmolLM2-135M-Instruct, arithmetic (chat), 300 steps x 8",
            MATH_CPU, {"all": {"layers": "all"}, "cka 50%": {"selector": "cka", "n": 0.5, "layers": "all"},
                       "last 50%": {"selector": "last", "n": 0.5, "layers": "all"}}, (0,), step_s=9.0, optional=True),
    ],
    "gpu": [
        Row("encoder", "MiniLM-L6 (6 blocks), sarcasm, 8,000 train examples, 4 epochs (1,000 steps x 32), r=16",
            {**ENCODER_CPU, "data.train_size": 8000, "train.steps": 1000, "train.lr": 5e-4, "train.warmup_steps": 50,
             "train.eval_every": 125, "lora.r": 16, "lora.alpha": 32},
            {"all": {"layers": "all"}, **{f"{s} 50%": {"selector": s, "n": 3, "layers": "all"}
                                          for s in ("cka", "activation", "first", "last", "random")}},
            (0, 1), step_s=0.12),
    ],
    "gpu-long": [
        Row("encoder", "MiniLM-L6 (6 blocks), sarcasm, all ~27.9k train examples, 2,000 steps x 32 (~2.3 epochs), r=16",
            {**ENCODER_CPU, "data.train_size": None, "train.steps": 2000, "train.lr": 5e-4, "train.warmup_steps": 100,
             "train.eval_every": 250, "lora.r": 16, "lora.alpha": 32},
            {"all": {"layers": "all"}, **{f"{s} 50%": {"selector": s, "n": 3, "layers": "all"}
                                          for s in ("cka", "activation", "first", "last", "random")},
             **{f"{s} 33%": {"selector": s, "n": 2, "layers": "all"} for s in ("cka", "activation", "random")}},
            (0, 1, 2), step_s=0.12),
    ],
    "gpu-decoder": [
        Row("decoder", "SmolLM2-135M (30 blocks), sarcasm, 600 steps x 16 (the cpu row's budget), 3 seeds",
            DECODER_CPU, DECODER_ARMS, (0, 1, 2), step_s=0.3),
    ],
    # The seeds' budgets. CKA paper: 30-80 epochs on GLUE-size encoder sets (10 epochs of the 27k
    # sarcasm headlines here), ~6,250 steps on math; IST: 3 epochs of its 170k arithmetic set
    # (~32k steps; 3 epochs of sarcasm here, ~5k steps at 16); Flexora: ~600 search + ~6,750
    # fine-tuning steps; LISA: one epoch. Seconds per step: H100 (benchmarks/peer_step_time_h100.json:
    # SmolLM2 0.31 s at 16 x 64 tokens; MiniLM and math scaled by tokens per step).
    "paper": [
        Row("encoder", "MiniLM-L6, sarcasm, all of train, 10 epochs (~8,500 steps x 32)",
            {**ENCODER_CPU, "data.train_size": None, "train.steps": 8500, "train.lr": 5e-4, "train.warmup_steps": 500,
             "train.eval_every": 500, "train.eval_subset": 0, "lora.r": 16, "lora.alpha": 32},
            _arms(STATIC, (0.25, 0.5)), (0, 1, 2), step_s=0.12),
        Row("decoder", "SmolLM2-135M, sarcasm, 3 epochs (~5,200 steps x 16)",
            {**DECODER_CPU, "train.steps": 5200, "train.lr": 3e-4, "train.warmup_steps": 100, "train.eval_every": 250,
             "train.eval_subset": 0},
            _arms(STATIC + ("ist", "lisa", "flexora"), (0.25, 0.5)), (0, 1, 2), step_s=0.31),
        Row("math", "SmolLM2-135M-Instruct, gsm_symbolic (chat), ~6,250 steps x 16",
            {**MATH_CPU, "task.name": "gsm_symbolic", "task.max_new_tokens": 256, "data.max_length": 384,
             "data.test_size": 500, "train.batch_size": 16, "train.steps": 6250, "train.lr": 2e-4,
             "train.warmup_steps": 100, "train.eval_every": 500, "train.eval_subset": 100},
            _arms(("cka", "activation", "ist", "lisa", "last"), (0.5,)), (0, 1, 2), step_s=1.2),
    ],
}


@dataclass(frozen=True)
class Claim:
    text: str
    row: str
    arm: str
    versus: tuple[str, ...]
    margin: float
    """The claim holds when arm - versus > margin (e.g. -0.01: within a point)."""
    source: str = field(default="")


CLAIMS = (
    Claim("50% of blocks chosen by CKA train within about a point of all blocks (encoder)", "encoder", "cka 50%",
          ("all",), -0.01, "CKA paper"),
    Claim("50% of blocks chosen by activation norm train within about a point of all blocks (encoder)", "encoder",
          "activation 50%", ("all",), -0.01, "Act-LoRA"),
    Claim("IST beats random blocks and LISA at the same blocks per step (decoder, 25%)", "decoder", "ist 25%",
          ("random 25%", "lisa 25%"), 0.0, "IST Table 4"),
    Claim("50% of blocks chosen by CKA train within about a point of all blocks (decoder, math)", "math", "cka 50%",
          ("all",), -0.01, "CKA paper"),
)


# --- running --------------------------------------------------------------------------------------

def result_path(budget: str, row: str, arm: str, seed: int) -> Path:
    return ROOT / budget / row / f"{arm.replace(' ', '_').replace('%', 'pct')}-s{seed}.json"


def work_dir(budget: str, row: str, arm: str, seed: int) -> Path:
    """Where a configuration trains (git-ignored); removed once its result is written."""
    return ROOT / budget / ".runs" / row / result_path(budget, row, arm, seed).stem


def run_one(budget: str, row: Row, arm: str, seed: int) -> dict:
    """Trains and tests one configuration. One that was interrupted continues from its newest
    checkpoint (``train.checkpoint_every``; the last step's always exists), so a killed 50-minute
    run loses at most the steps since then, and one killed during its test evaluation loses none."""
    from raylsl.config import load_config
    from raylsl.recipes.train import resume, train

    overrides = {**row.base, **row.arms[arm], "train.seed": seed, "calibration.seed": seed, "eval_split": "test"}
    first = arm == next(iter(row.arms))  # the base model's test metrics are the same for every arm
    out = work_dir(budget, row.name, arm, seed)
    started = time.perf_counter()
    if (out / "run" / "checkpoints").is_dir():
        print(f"    resuming {out / 'run'}", flush=True)
        r = resume(out / "run", progress=False)
    else:
        shutil.rmtree(out, ignore_errors=True)
        config = load_config(None, {**overrides, "output_dir": str(out), "name": "run", "eval_before": first})
        r = train(config, progress=False)
    wall = time.perf_counter() - started
    lines = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: v for k, v in m.items() if k == "step" or k.startswith("val_")} for m in lines
             if any(k.startswith("val_") for k in m)]
    return {"budget": budget, "row": row.name, "arm": arm, "seed": seed, "overrides": overrides,
            "layers": r["layers"], "params": r["params"], "before": r["before"], "after": r["after"],
            "after_per_example": r.get("after_per_example"), "curve": curve,
            "train_loss": [m["loss"] for m in lines], "selection_time_s": r["selection_time_s"],
            "train_time_s": r["train"]["train_time_s"], "wall_s": wall, "dynamic": r.get("dynamic"),
            "resumed_from": r["train"].get("resumed_from"),
            "step_time_sum_s": sum(m.get("step_time_s", 0.0) for m in lines)}


def pending(budget: str, rows: list[str] | None, seeds: list[int] | None,
            arms: list[str] | None = None) -> list[tuple[Row, str, int]]:
    """The configurations without a result: seed by seed (so an interruption leaves whole seeds),
    row by row in the grid's order, arm by arm in ``arms``' order when it is given."""
    grid = [row for row in GRIDS[budget] if (rows is None and not row.optional) or (rows and row.name in rows)]
    all_seeds = sorted({s for row in grid for s in row.seeds} if seeds is None else seeds)
    return [(row, arm, seed) for seed in all_seeds for row in grid if seed in row.seeds or seeds is not None
            for arm in (row.arms if arms is None else [a for a in arms if a in row.arms])
            if not result_path(budget, row.name, arm, seed).is_file()]


def run_and_save(budget: str, row: Row, arm: str, seed: int) -> None:
    result = run_one(budget, row, arm, seed)
    path = result_path(budget, row.name, arm, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.rename(path)  # a half-written file is never taken for a finished configuration
    shutil.rmtree(work_dir(budget, row.name, arm, seed), ignore_errors=True)
    metric = headline(result)
    print(f"    {row.name}: {arm}, seed {seed}: test {metric} {result['after'][metric]:.4f}, "
          f"{result['wall_s'] / 60:.1f} min", flush=True)


def run(budget: str, rows: list[str] | None, seeds: list[int] | None, jobs: int = 1,
        arms: list[str] | None = None) -> None:
    todo = pending(budget, rows, seeds, arms)
    if jobs <= 1:
        for row, arm, seed in todo:
            print(f"[{time.strftime('%H:%M:%S')}] {budget}/{row.name}: {arm}, seed {seed}", flush=True)
            run_and_save(budget, row, arm, seed)
        return
    # One process per configuration, ``jobs`` at a time; each prints to its own log beside the results.
    logs = ROOT / budget / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    running: list[tuple[subprocess.Popen, str, object]] = []
    failed = []
    while todo or running:
        while todo and len(running) < jobs:
            row, arm, seed = todo.pop(0)
            name = f"{row.name}/{arm}/{seed}"
            log = open(logs / f"{row.name}-{result_path(budget, row.name, arm, seed).stem}.log", "w")
            cmd = [sys.executable, __file__, "--budget", budget, "--one", name]
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), name, log))
            print(f"[{time.strftime('%H:%M:%S')}] started {budget}/{name}", flush=True)
        time.sleep(2)
        for entry in [e for e in running if e[0].poll() is not None]:
            proc, name, log = entry
            log.close()
            running.remove(entry)
            print(f"[{time.strftime('%H:%M:%S')}] {'finished' if proc.returncode == 0 else 'FAILED'} {budget}/{name}"
                  + ("" if proc.returncode == 0 else f" (exit {proc.returncode}; see {log.name})"), flush=True)
            if proc.returncode != 0:
                failed.append(name)
    if failed:
        raise SystemExit(f"{len(failed)} configuration(s) failed: {', '.join(failed)}")


def headline(result: dict) -> str:
    return "acc" if "acc" in result["after"] else ("exact_match" if "exact_match" in result["after"] else "loss")


# --- assembling -----------------------------------------------------------------------------------

def load_results(budget: str) -> dict[str, dict[str, dict[int, dict]]]:
    out: dict = {}
    for path in sorted((ROOT / budget).glob("*/*.json")):
        r = json.loads(path.read_text())
        out.setdefault(r["row"], {}).setdefault(r["arm"], {})[r["seed"]] = r
    return out


def per_example(result: dict, metric: str) -> np.ndarray:
    record = result["after_per_example"] or {}
    values = record.get(metric)
    return np.asarray([math.nan if v is None else v for v in values], dtype=float) if values is not None else None


def paired_difference(a: dict[int, dict], b: dict[int, dict], metric: str, n_boot: int = 4000, seed: int = 0):
    """Mean over the seeds both arms have of (a - b), with a 95% paired bootstrap interval over test
    examples (the same resample for every seed)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    pairs = [(per_example(a[s], metric), per_example(b[s], metric)) for s in seeds]
    if any(x is None or y is None or len(x) != len(y) for x, y in pairs):
        diff = float(np.mean([a[s]["after"][metric] - b[s]["after"][metric] for s in seeds]))
        return {"diff": diff, "ci": None, "seeds": seeds}
    n = len(pairs[0][0])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(n_boot, n))
    boot = np.mean([np.nanmean(x[index], axis=1) - np.nanmean(y[index], axis=1) for x, y in pairs], axis=0)
    diff = float(np.mean([np.nanmean(x) - np.nanmean(y) for x, y in pairs]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"diff": diff, "ci": (float(low), float(high)), "seeds": seeds, "n": n}


def mean_and_spread(values: list[float]) -> str:
    """``0.922 ± 0.002``: the mean over seeds and half their range (the mean alone for one seed)."""
    return f"{np.mean(values):.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


def difference_text(d: dict | None) -> str:
    """A `paired_difference` as ``-0.015 [-0.029, -0.002]`` (no interval where it has none)."""
    if d is None:
        return ""
    return f"{d['diff']:+.3f}" + (f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else "")


def verdict(claim: Claim, results: dict) -> dict:
    arms = results.get(claim.row, {})
    if claim.arm not in arms or any(v not in arms for v in claim.versus):
        return {"claim": claim.text, "verdict": "not run yet", "comparisons": []}
    metric = headline(next(iter(arms[claim.arm].values())))
    comparisons, outcomes = [], []
    for other in claim.versus:
        d = paired_difference(arms[claim.arm], arms[other], metric)
        comparisons.append({"versus": other, **d})
        if d["ci"] is None:
            outcomes.append("undecided")
        elif d["ci"][0] > claim.margin:
            outcomes.append("reproduced")
        elif d["ci"][1] < claim.margin:
            outcomes.append("not reproduced")
        else:
            outcomes.append("undecided")
    final = ("reproduced" if all(o == "reproduced" for o in outcomes) else
             "not reproduced" if any(o == "not reproduced" for o in outcomes) else "undecided at this budget")
    return {"claim": claim.text, "source": claim.source, "metric": metric, "margin": claim.margin,
            "verdict": final, "comparisons": comparisons}


def table(budget: str) -> str:
    results = load_results(budget)
    lines = [f"# Reproduction grid, budget `{budget}`", ""]
    for row in GRIDS[budget]:
        arms = results.get(row.name)
        if not arms:
            continue
        metric = headline(next(iter(next(iter(arms.values())).values())))
        lines += [f"## {row.name}: {row.what}", "",
                  f"| arm | blocks | adapter params | seeds | test {metric} before | test {metric} after (mean ± spread) "
                  f"| minus all | curve (val, by step) | train min |", "|" + "---|" * 9]
        base = arms.get("all")
        for arm in row.arms:
            if arm not in arms:
                continue
            runs = arms[arm]
            after = [r["after"][metric] for r in runs.values()]
            minus = difference_text(paired_difference(runs, base, metric) if base and arm != "all" else None)
            first = runs[min(runs)]
            curve = " ".join(f"{c['step']}:{c.get('val_' + metric, float('nan')):.2f}" for c in first["curve"])
            blocks = first["dynamic"] and f"{arm.split()[0]} (dynamic)" or _layers(first["layers"])
            befores = [r["before"][metric] for a in arms.values() for r in a.values() if r.get("before")]
            lines.append(f"| {arm} | {blocks} | {first['params']['adapter']:,} | {len(runs)} "
                         f"| {np.mean(befores) if befores else float('nan'):.3f} "
                         f"| {mean_and_spread(after)} | {minus} | {curve} | {np.mean([train_seconds(r) for r in runs.values()]) / 60:.1f} |")
        lines.append("")
    lines += ["## Claims", "", "| claim | source | verdict | numbers |", "|---|---|---|---|"]
    verdicts = [verdict(c, results) for c in CLAIMS]
    for v in verdicts:
        numbers = "; ".join(f"vs {c['versus']}: {difference_text(c)} ({len(c['seeds'])} seeds)" for c in v["comparisons"])
        lines.append(f"| {v['claim']} | {v.get('source', '')} | {v['verdict']} | {numbers} |")
    text = "\n".join(lines) + "\n"
    plot_curves(budget, results)
    (ROOT / f"{budget}.md").write_text(text)
    (ROOT / f"{budget}.json").write_text(json.dumps({"budget": budget, "claims": verdicts}, indent=1))
    return text


def train_seconds(result: dict) -> float:
    """The configuration's training time; for one resumed after an interruption, the sum of its
    steps' times (the resumed process timed only what was left)."""
    return result["step_time_sum_s"] if result.get("resumed_from") else result["train_time_s"]


def plot_curves(budget: str, results: dict) -> Path | None:
    """Validation curves, one panel per row, one line per arm (mean over seeds, band from the lowest
    to the highest seed), so a reader sees whether the runs converged: ``<budget>.png``."""
    rows = [row for row in GRIDS[budget] if results.get(row.name)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 4.2), squeeze=False)
    for ax, row in zip(axes[0], rows):
        arms = results[row.name]
        metric = headline(next(iter(next(iter(arms.values())).values())))
        for arm in row.arms:
            if arm not in arms:
                continue
            curves = [{c["step"]: c.get("val_" + metric, math.nan) for c in r["curve"]} for r in arms[arm].values()]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = np.array([[c[step] for step in steps] for c in curves])
            line, = ax.plot(steps, values.mean(axis=0), marker=".", label=f"{arm} ({len(curves)} seeds)",
                            linestyle="-" if arm == "all" else "--" if "50%" in arm else ":")
            if len(curves) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.12)
        ax.set(title=f"{budget}: {row.name}", xlabel="step", ylabel=f"validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = ROOT / f"{budget}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _layers(layers: list[int]) -> str:
    from raylsl.results import format_layers

    return format_layers(layers)


def estimate(budget: str, jobs: int = 1) -> str:
    lines = [f"budget {budget}: estimated machine time (steps x seconds per step; evaluation not counted)"]
    total = 0.0
    for row in GRIDS[budget]:
        hours = len(row.arms) * len(row.seeds) * row.base["train.steps"] * row.step_s / 3600
        total += 0 if row.optional else hours
        lines.append(f"  {row.name:<13} {len(row.arms):>3} arms x {len(row.seeds)} seeds x {row.base['train.steps']:>5} "
                     f"steps x {row.step_s:.2f} s = {hours:6.1f} h" + ("  (optional: --rows)" if row.optional else ""))
    lines.append(f"  total {total:.1f} h without the optional rows, one configuration at a time"
                 + (" on one H100 (the 'paper' budget is for a GPU)" if budget == "paper" else ""))
    if jobs > 1:
        # Measured on an H200 (docs/results.md): MiniLM ran 0.075 s/step in each of 12 processes and 0.10 in
        # each of 18, so small launch-bound models scale nearly linearly up to the CPU cores.
        lines.append(f"  with --jobs {jobs}: about {total / jobs:.1f} h if each process keeps its speed (true for "
                     f"launch-bound models on a GPU with spare CPU cores; not on a CPU-only machine)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(GRIDS), default="cpu")
    parser.add_argument("--rows", help="comma-separated rows to run (default: all, in order)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: each row's)")
    parser.add_argument("--table", action="store_true", help="assemble the results that exist; run nothing")
    parser.add_argument("--estimate", action="store_true", help="print the grid's estimated machine time")
    parser.add_argument("--clear", metavar="ROW", help="delete a row's results (to rerun it)")
    parser.add_argument("--arms", help="comma-separated arms to run, in this order (default: all of each row's)")
    parser.add_argument("--jobs", type=int, default=1, help="configurations at once, one process each (GPU)")
    parser.add_argument("--one", metavar="ROW/ARM/SEED", help=argparse.SUPPRESS)  # what --jobs starts
    args = parser.parse_args()
    if args.one:
        name, arm, seed = args.one.split("/")
        run_and_save(args.budget, next(r for r in GRIDS[args.budget] if r.name == name), arm, int(seed))
        return
    if args.estimate:
        print(estimate(args.budget, args.jobs))
        return
    if args.clear:
        shutil.rmtree(ROOT / args.budget / args.clear, ignore_errors=True)
        return
    if not args.table:
        run(args.budget, args.rows.split(",") if args.rows else None,
            [int(s) for s in args.seeds.split(",")] if args.seeds else None, args.jobs,
            args.arms.split(",") if args.arms else None)
    print(table(args.budget))


if __name__ == "__main__":
    main()
