"""The measured tables of ``docs/``, rendered from the JSON the benchmark scripts write.

Each entry of `TABLES` names its JSON file(s) (or, for the reproduction grid, which writes one
file per configuration, the directory of them) and a function from the loaded JSON to Markdown
lines: the first says what the figures were measured on and at what budget, the rest are the table.
``python docs/generate.py`` puts each rendering between the ``<!-- table: NAME -->`` and
``<!-- end table -->`` markers of any page under ``docs/``, so a rerun benchmark updates its table
and the prose around it stays as written. A JSON file that is absent, or that lacks a section a table
reads, gives a one-line note instead of the table (`render`).
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Any, Callable

from raylsl.report import objectives, pareto_mask

HERE = Path(__file__).resolve().parent
CPU = "this project's CPU machine (2 cores, no GPU)"


def _blocks(layers: list[int] | str, sep: str = ",") -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    if isinstance(layers, str):
        return layers
    runs: list[list[int]] = []
    for i in sorted(layers):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return sep.join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)


def _table(header: list[str], align: str, rows: list[list[Any]]) -> list[str]:
    """A Markdown table; ``align`` holds one ``l`` or ``r`` per column."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _on(data: dict, budget: str, file: str) -> str:
    machine = data.get("card") or data.get("machine") or data.get("device") or "cpu"
    where = CPU if machine == "cpu" else machine
    return f"_Measured on {where}; {budget} (`benchmarks/{file}`)._"


def selective_cost(d: dict) -> list[str]:
    rows = []
    for name, r in d["rows"].items():
        label = "all 30" if name == "all" else f"{name.replace('-', ' ')} ({r['layers']})"
        time = "1.00 ({:.2f} s)".format(r["step_time_s"]) if r["time_ratio"] == 1 else f"{r['time_ratio']:.2f}"
        memory = "1.00 ({:,.0f} MB)".format(r["train_memory_mb"]) if r["memory_ratio"] == 1 else f"{r['memory_ratio']:.2f}"
        rows.append([label, f"{r['adapter_params']:,}", time, memory])
    return [_on(d, f"{d['model']}, batch {d['batch_size']}, {d['steps'] - d['warmup']} timed steps",
                "selective_cost.json"), ""] + _table(
        ["blocks", "adapter params", "step time vs all", "training memory vs all"], "lrrr", rows)


def demo_sarcasm(d: dict) -> list[str]:
    rows = []
    everything = d["rows"]["all"]["adapter_params"]
    for name, r in d["rows"].items():
        low, _, high = r["layers"].partition("-")
        total = round((int(high) - int(low) + 1) * everything / r["adapter_params"]) if high else None
        label = f"all {total or 30} blocks" if name == "all" else (
            f"upper {int(high) - int(low) + 1} of {total} blocks" if high and int(high) == total - 1 else f"blocks {r['layers']}")
        time = "1.00 ({:.0f} s)".format(r["train_time_s"]) if r["time_ratio"] == 1 else f"{r['time_ratio']:.2f}"
        rows.append([label, f"{r['adapter_params']:,}", f"{r['acc_before']:.3f} -> {r['acc_after']:.3f}", time])
    n = next(iter(d["rows"].values()))["n_test"]
    return [_on(d, f"SmolLM2-135M on sarcasm, {d['steps']} steps x batch 16, test n={n}", "demo_sarcasm.json"),
            ""] + _table(["adapters", "params", "test acc before -> after", "train time vs all"], "lrrr", rows)


def selection_cost(d: dict) -> list[str]:
    rows = [[name, f"{r['seconds']:.1f}", f"{r['fraction_of_training']:.1%}"] for name, r in d["rows"].items()]
    budget = (f"SmolLM2 + sarcasm, 128 calibration examples; the training run it configures: {d['steps']} steps x "
              f"{d['step_time_s']:.2f} s = {d['train_time_s']:.0f} s")
    return [_on(d, budget, "selection_cost.json"), ""] + _table(["selector", "seconds", "share of the training run"],
                                                                "lrr", rows)


def ranking_stability(d: dict, encoder: dict) -> list[str]:
    rows = []
    for name, r in d["rows"].items():
        e = encoder["rows"][name]
        rows.append([name, f"{r['tau_seeds_mean']:.3f}", f"{r['tau_sarcasm_vs_quartz']:.3f}",
                     f"{e['tau_seeds_mean']:.3f} ({e['tau_seeds_min']:.3f})", f"{e['tau_sarcasm_vs_quartz']:.3f}"])
    budget = f"Kendall tau over {d['seeds']} calibration seeds (mean of the pairs), and sarcasm vs quartz"
    return [_on(d, budget, "ranking_stability.json, ranking_stability_minilm-l6.json"), ""] + _table(
        ["selector", "SmolLM2 (30 blocks): tau across seeds", "tau sarcasm vs quartz",
         "MiniLM-L6 (6 blocks): tau across seeds (min)", "tau sarcasm vs quartz"], "lrrrr", rows)


def selector_accuracy(d: dict) -> list[str]:
    rows = [[r["selector"], "all" if r["n"] is None else r["n"], _blocks(r["layers"]), f"{r['adapter_params']:,}",
             f"{r['param_fraction']:.0%}", f"{r['acc']:.3f}", f"{r['acc_minus_all']:+.3f}"] for r in d["rows"]]
    budget = (f"SmolLM2 + sarcasm, {d['steps']} steps x batch 16, same seed, test n={d['base_acc']['n']} "
              f"(base model {d['base_acc']['acc']:.3f})")
    return [_on(d, budget, "selector_accuracy.json"), ""] + _table(
        ["selector", "n", "blocks chosen", "adapter params", "% of all", "test acc", "vs all"], "lrlrrrr", rows)


def dynamic_selectors(d: dict) -> list[str]:
    rows = [[r["run"], f"{r['adapter_params']:,}", f"{int(r['updated_per_step']):,}", f"{r['acc']:.3f}"]
            for r in d["rows"]]
    return [_on(d, f"SmolLM2 + sarcasm, {d['steps']} steps x batch 16, same seed, test n=500",
                "dynamic_selectors.json"), ""] + _table(
        ["run", "adapters that exist", "updated per step", "test acc"], "lrrr", rows)


def distributed_cost(d: dict) -> list[str]:
    rows = [[r["run"], f"{r['step_time_s']:.2f}", f"{r['time_ratio']:.2f}", f"{r['peak_rss_mb_rank0']:,.0f}"]
            for r in d["rows"]]
    return [_on(d, f"SmolLM2-135M through Ray Train (gloo), global batch 16, {d['steps'] - d['warmup']} timed steps",
                "distributed_cost.json"), ""] + _table(["run", "s/step", "vs 1 worker", "rank-0 peak RSS (MB)"],
                                                       "lrrr", rows)


GPU_NOTES = {"ray-ist": "NCCL broadcast of IST's choices; includes its probe steps",
             "zero2": "DeepSpeed's own buffers (not broken down here)",
             "zero3": "built by zero.Init; parameters gathered and released around every module"}
GPU_CONFIGS = {"single": "single process, bf16 base", "ray-ist": "Ray Train, 1 GPU worker, IST 25%",
               "zero2": "Ray Train, 1 GPU worker, ZeRO-2", "zero3": "Ray Train, 1 GPU worker, ZeRO-3"}


def gpu_check(d: dict, file: str = "gpu_check.json") -> list[str]:
    single = next(r["median_step_s"] for r in d["rows"] if r["config"] == "single")
    rows = [[GPU_CONFIGS.get(r["config"], r["config"]), f"{r['median_step_s']:.3f}",
             f"{r['median_step_s'] / single:.2f}", f"{r['peak_gpu_memory_mb']:,.0f}", GPU_NOTES.get(r["config"], "")]
            for r in d["rows"]]
    budget = (f"torch {d['torch']}, {d['weights']}; {d['steps']} steps x batch {d['batch']}, median step after "
              f"{d['warmup']}")
    return [_on(d, budget, file), ""] + _table(
        ["configuration", "s/step", "vs single", "peak GPU memory (MB)", "notes"], "lrrrl", rows)


def generative_math(d: dict) -> list[str]:
    def em(after: dict) -> str:
        p, n = after["exact_match"], after["n"]
        return f"{p:.3f} ± {(p * (1 - p) / n) ** 0.5:.3f}"

    rows = [["base model", "-", 0, em(d["before"]), f"{d['before']['loss']:.3f}"]]
    rows += [[name, _blocks(r["layers"], ", "), f"{r['adapter_params']:,}", em(r["after"]), f"{r['after']['loss']:.3f}"]
             for name, r in d["arms"].items()]
    s = d["settings"]
    return [_on(d, f"arithmetic, {s['steps']} steps x batch 8, test n={s['data.test_size']}",
                "generative_math.json"), ""] + _table(
        ["blocks", "chosen", "adapter params", "exact match", "held-out loss"], "llrll", rows)


def _accuracies(row: dict) -> str:
    ours = row["runs"]["raylsl"][0]
    theirs = "" if row["identical_metrics"] else f" (lm-eval: {row['runs'][row['peer']][0]['acc']:.3f})"
    return f"{ours['acc']:.3f}, {ours['acc_norm']:.3f}{theirs}"


TASK_LABELS = {"sarcasm": "sarcasm (2 single-token choices)", "quartz": "quartz (2 choices, 1-3 tokens)"}


def eval_speed(d: dict) -> list[str]:
    rows = []
    for task, r in d["rows"].items():
        ratios = r["time_ratios"]
        rows.append([TASK_LABELS.get(task, task), f"{r['median_s'][r['peer']]:.1f}", f"{r['median_s']['raylsl']:.1f}",
                     f"**{r['time_ratio']:.2f}** ({min(ratios):.2f}-{max(ratios):.2f})",
                     _accuracies(r)])
    return [_on(d, f"base SmolLM2, n=500, median of {d['repeats']} runs each", "eval_speed.json"), ""] + _table(
        ["task", "lm-eval s", "raylsl s", "raylsl / lm-eval", "acc, acc_norm (both tools unless noted)"], "lrrrl",
        rows)


def peer_step_time(cpu: dict, h100: dict) -> list[str]:
    def median(runs: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in runs)

    rows = []
    for d in (cpu, h100):
        device = "CPU" if d["device"] == "cpu" else d["device"].split()[1] + (" (1 run each)" if d["repeats"] == 1 else "")
        for i, (name, r) in enumerate(d["rows"].items()):
            trainer, ours = median(r["runs"]["trainer"], "median_step_s"), median(r["runs"]["raylsl"], "median_step_s")
            ratios = r["time_ratios"]
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            memory = f"{r['memory_ratio']:.2f}"
            if i == 0:  # the absolute figures once per device
                memory += (f" ({median(r['runs']['trainer'], 'peak_memory_mb'):,.0f} -> "
                           f"{median(r['runs']['raylsl'], 'peak_memory_mb'):,.0f} MB)")
            digits = 2 if trainer >= 1 else 3
            rows.append([device, name.replace(" blocks", ""), f"{trainer:.{digits}f}", f"{ours:.{digits}f}",
                         f"**{r['time_ratio']:.2f}**{spread}", memory])
    budget = (f"{cpu['repeats']} runs of each tool; the GPU rows on {h100['device']}, {h100['repeats']} run each; "
              f"median step after {cpu['warmup']} warm-up steps")
    return [_on(cpu, budget, "peer_step_time.json, peer_step_time_h100.json"), ""] + _table(
        ["device", "blocks", "Trainer s/step", "raylsl s/step", "raylsl / Trainer", "peak memory raylsl / Trainer"],
        "llrrrr", rows)


def memory_load(d: dict) -> list[str]:
    rows = [[r["checkpoint"], r["how"], f"{r['seconds']:.2f}", f"{r['peak_rss_mb']:,.0f}",
             f"{r['bytes_per_param_rss']:.2f}"] for r in d["load"]]
    return [_on(d, f"{d['model']} ({d['load'][0]['params']:,} parameters), loading alone", "memory_levers.json"),
            ""] + _table(["checkpoint", "loaded as", "seconds", "peak RSS (MB)", "bytes per parameter"], "llrrr", rows)


def memory_estimate(d: dict) -> list[str]:
    rows = [[f"{r['blocks']} ({r['layers']})", r["checkpointing"], r["loss_chunk"] or "off",
             f"{r['estimated_step_mb']:,.0f}", f"{r['measured_step_mb']:,.0f}", f"{r['step_error']:+.1%}"]
            for r in d["estimate"]]
    budget = (f"{d['model']}, batch {d['batch']} x sequence {d['sequence']}, one step per row; its measured memory "
              f"beside `raylsl estimate`'s figure for it")
    return [_on(d, budget, "memory_levers.json"), ""] + _table(
        ["blocks", "checkpointing", "loss chunk", "estimated step (MB)", "measured step (MB)", "error"], "lllrrr", rows)


def memory_checkpointing(d: dict) -> list[str]:
    rows = d["checkpointing"]
    ref = next(r for r in rows if r["blocks"] == "all-30" and r["checkpointing"] == "full")
    table = [[f"{r['blocks']} ({r['layers']})", r["checkpointing"], f"{r['step_s']:.2f}",
              f"{r['step_s_min']:.2f}-{r['step_s_max']:.2f}", f"{r['step_s'] / ref['step_s']:.2f}",
              f"{r['peak_step_mb']:,.0f}", f"{r['peak_step_mb'] / ref['peak_step_mb']:.2f}"] for r in rows]
    budget = (f"{d['model']}, fp32, batch {d['batch']} x sequence {d['sequence']}, median of "
              f"{rows[0]['timed_steps']} steps after {d['warmup']}, the rows' steps interleaved in one process; "
              f"ratios to all 30 blocks with full checkpointing")
    return [_on(d, budget, "memory_levers.json"), ""] + _table(
        ["blocks", "checkpointing", "s/step", "range", "x", "step peak (MB)", "x"], "llrrrrr", table)


def _front(trials: list[dict]) -> list[dict]:
    """The finished trials on the front of the default objectives (`raylsl.report.objectives`),
    fewest parameters first, as a sweep's report orders them."""
    done = [t for t in trials if t["status"] == "TERMINATED"]
    goals = objectives()
    mask = pareto_mask([[t[k] for k in goals] for t in done], list(goals.values()))
    return sorted((t for t, keep in zip(done, mask) if keep), key=lambda t: (t["trainable_params"], -t["val_acc"]))


def sweep_front(d: dict) -> list[str]:
    tpe = d["tpe"]
    rows = [[t["selector"], t["blocks"], t["rank"], f"{t['trainable_params']:,}", f"{t['pct_of_all_blocks']:.1f}",
             f"{t['val_acc']:.3f}", f"{t['test_acc']:.3f}", f"{t['train_time_s']:.1f}",
             t["checkpoint"][t["checkpoint"].index(tpe["run_dir"]):]] for t in _front(tpe["trials_table"])]
    return [_on(d, f"TPE, {tpe['trials']} trials of 40 steps x batch 8", "sweep_pareto.json"), ""] + _table(
        ["selector", "blocks", "rank", "trainable params", "% of all-block LoRA", "val acc", "test acc",
         "train time (s)", "checkpoint"], "lllllllll", rows)


def sweep_hypervolume(d: dict) -> list[str]:
    ks = range(4, d["tpe"]["trials"] + 1, 4)
    rows = [[label] + [f"{d[name]['hypervolume_after_k'][k - 1]:.3f}" for k in ks]
            for name, label in (("tpe", "Optuna TPE"), ("random", "random"))]
    return [_on(d, f"{d['tpe']['trials']} trials per sampler, hypervolume of the front after K", "sweep_pareto.json"),
            ""] + _table(["K", *map(str, ks)], "l" + "r" * len(ks), rows)


def sweep_halving(d: dict) -> list[str]:
    first = next(iter(d.values()))
    rows = []
    for name in ("none", "pareto_halving"):
        r = d[name]
        ratio = "" if r is first else f" ({r['wall_time_s'] / first['wall_time_s']:.2f}x)"
        rows.append([name, f"{r['finished']} / {r['stopped_early']}", f"{r['wall_time_s'] / 60:.1f} min{ratio}",
                     f"{r['hypervolume_end']:.3f}", f"{r['hypervolume_at_equal_budget']:.3f}"])
    budget = f"{first['trials']} trials per scheduler, 40 steps x batch 8 each"
    return [_on(d, budget, "sweep_halving.json"), ""] + _table(
        ["scheduler", "trials finished / stopped", "Tune wall time", "hypervolume at the end",
         f"at {d['equal_budget_s'] / 60:.1f} min"], "lllll", rows)


RESUMED = {"random"}
"""The 40-trial sweeps that were interrupted and resumed: Tune's wall time counts the gap (the
footnote under the table says so)."""
SAMPLERS = {"nsga2": "NSGA-II", "tpe": "TPE", "random": "random"}


def _after_k(r: dict) -> list[str]:
    return [f"{v:.3f}" for v in r["hypervolume_after_k"].values()]


def sweep_samplers(d: dict) -> list[str]:
    rows = [[label, f"{d[name]['finished']} / {d[name]['stopped_early']} / {d[name]['failed']}",
             f"{d[name]['wall_time_s'] / 60:.1f} min" + ("*" if name in RESUMED else ""),
             f"{d[name]['train_time_s'] / 60:.1f} min", *_after_k(d[name])] for name, label in SAMPLERS.items()]
    ks = list(d["nsga2"]["hypervolume_after_k"])
    return [_on(d, f"{d['trials_requested']} trials per sampler under pareto_halving", "sweep_samplers.json"),
            ""] + _table(["sampler", "trials finished / stopped / failed", "Tune wall time", "training time, all trials",
                          f"HV after {ks[0]}", *(f"after {k}" for k in ks[1:])], "llllllll", rows)


def sweep_tiebreak(before: dict, after: dict) -> list[str]:
    rows = []
    for label, r in (("before (ties decided by parameters)", before["random"]),
                     ("ties ordered by validation loss", after["random"])):
        resumed = r is before["random"] and "random" in RESUMED
        wall = "(interrupted)" if resumed else f"{r['wall_time_s'] / 60:.1f} min"
        rows.append([label, f"{r['finished']} / {r['stopped_early']}", wall, *_after_k(r)])
    ks = list(after["random"]["hypervolume_after_k"])
    return [_on(after, f"random search, {after['trials_requested']} trials each, same seed",
                "sweep_samplers.json, sweep_samplers_tiebreak.json"), ""] + _table(
        [f"random search, {after['trials_requested']} trials", "finished / stopped", "Tune wall time",
         f"HV after {ks[0]}", *(f"after {k}" for k in ks[1:])], "lllllll", rows)


def sweep_cost_front(d: dict) -> list[str]:
    trials = sorted((t for t in d["trials"] if t["status"] == "TERMINATED"), key=lambda t: -t["trainable_params"])
    rows = [[t["selector"], t["blocks"].split(" (")[0], int(t["rank"]), f"{t['trainable_params']:,.0f}",
             f"{t['val_acc']:.3f} [{t['val_ci_low']:.3f}, {t['val_ci_high']:.3f}]", f"{t['peak_memory'] / 2**20:.0f}",
             f"{t['estimated_memory'] / 2**20:.0f}", f"{t['step_time']:.2f}", f"{t['step_time_spread']:.0%}"]
            for t in trials]
    b = d["budget"]
    budget = f"{len(trials)} of {b['trials']} trials, {b['train.steps']} steps x batch {b['train.batch_size']}"
    return [_on(d, budget, "sweep_cost_front.json"), ""] + _table(
        ["trial", "blocks", "r", "params", "val acc [95% CI]", "peak memory (MiB)", "estimate (MiB)", "step time (s)",
         "step IQR / median"], "lllllllll", rows)


def sweep_cost_repeats(d: dict) -> list[str]:
    reps = d["repeats"]
    base = reps["all r8"]["step_time_median"]
    rows = [[name, ", ".join(f"{r['step_time']:.2f}" for r in rep["runs"]), f"{rep['step_time_median']:.2f}",
             f"{rep['step_time_run_to_run']:.0%}", f"{rep['step_time_median'] / base:.2f}",
             f"{rep['runs'][0]['peak_memory'] / 2**20:.0f}" + ("" if rep["peak_memory_identical"] else " (varies)")]
            for name, rep in reps.items()]
    runs = len(next(iter(reps.values()))["runs"])
    return [_on(d, f"each configuration trained {runs} times one after another, the sweep's base config "
                   f"({d['budget']['train.steps']} steps x batch {d['budget']['train.batch_size']})",
                "sweep_cost_front.json"), ""] + _table(
        ["configuration", "step time per run (s)", "median", "run to run (max - min) / median", "median vs all r8",
         "peak memory (MiB, every run)"], "lllrrr", rows)


def selection_streaming(d: dict) -> list[str]:
    s = d["smollm2_135m"]
    rows = [[name, f"{r['whole']['seconds']:.1f}", f"{r['whole']['peak_bytes'] / 1e6:.0f} MB",
             f"{r['streamed']['seconds']:.1f}", f"{r['streamed']['peak_bytes'] / 1e6:.0f} MB", f"{r['peak_ratio']:.2f}",
             f"{r['max_score_difference']:.1f}"] for name, r in s.items() if isinstance(r, dict)]
    return [_on(d, f"SmolLM2-135M, {s['calibration_examples']} calibration examples, each in a fresh process",
                "selection_streaming.json"), ""] + _table(
        [f"SmolLM2-135M, {s['calibration_examples']} examples", "whole: seconds", "whole: peak", "streamed: seconds",
         "streamed: peak", "peak ratio", "largest score difference"], "lllllll", rows)


def vision_colours(d: dict) -> list[str]:
    rows = [[name, _blocks(r["layers"]), f"{r['trainable']:,}", f"{r['acc_before']:.3f}",
             f"{r['acc']:.3f} ± {r['acc_stderr']:.3f}", f"{r['acc_ratio']:.2f}", f"{r['step_time_s']:.3f}",
             f"{r['step_time_ratio']:.2f}"] for name, r in d["arms"].items()]
    return [_on(d, f"{d['steps']} steps x batch {d['batch_size']}, test n={next(iter(d['arms'].values()))['n']}; "
                   f"{d['note']}", "vision_colours.json"), ""] + _table(
        ["blocks", "chosen", "trainable", "test acc before", "after ± s.e.", "vs all", "s/step", "vs all"],
        "llrrrrrr", rows)


_NAMES = {"cka": "CKA", "ist": "IST", "lisa": "LISA", "flexora": "Flexora"}
_DYNAMIC = {"ist": "chosen by importance", "lisa": "resampled uniformly", "flexora": "chosen by search"}


def _repeats(values: list[str]) -> str:
    """``0.61, 0.61, 0.61, 0.76`` as ``0.61 x3, 0.76``."""
    runs: list[list] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return ", ".join(v if n == 1 else f"{v} x{n}" for v, n in runs)


def reproduce_arms(records: list[dict], budget: str, row: str, machine: str, curve: bool = False) -> list[str]:
    """One row of a `benchmarks/reproduce.py` grid from its per-configuration files: every arm's
    test accuracy over the seeds (mean ± half-range) and its 95% paired bootstrap difference to
    all blocks (`reproduce.paired_difference`, as ``--table`` computes it); arms grouped by block
    fraction, best first within a group. ``curve`` adds the first seed's validation curve."""
    from reproduce import GRIDS, difference_text, headline, mean_and_spread, paired_difference

    arms: dict[str, dict[int, dict]] = {}
    for r in records:
        if r["row"] == row:
            arms.setdefault(r["arm"], {})[r["seed"]] = r
    base = arms["all"]
    reference = base[min(base)]
    metric = headline(reference)
    seeds = len(base)

    def mean(runs):
        return statistics.fmean(r["after"][metric] for r in runs.values())

    def fraction(arm):
        return float(arm.split()[-1].rstrip("%")) if arm != "all" else 100.0

    order = sorted(arms, key=lambda arm: (-fraction(arm), -mean(arms[arm])))
    rows = []
    for arm in order:
        runs = arms[arm]
        first = runs[min(runs)]
        accuracy = mean_and_spread([r["after"][metric] for r in runs.values()])
        minus = difference_text(paired_difference(runs, base, metric) if arm != "all" else None)
        selector, _, share = arm.partition(" ")
        dynamic = first["dynamic"]
        if dynamic:
            per_step = round(dynamic["adapter_params_updated_per_step"] * len(first["layers"])
                             / dynamic["adapter_params_existing"])
            blocks = f"{per_step} per step, {_DYNAMIC.get(selector, 'dynamic')}"
            params = f"{dynamic['adapter_params_updated_per_step']:,.0f} per step"
        else:
            blocks, params = _blocks(first["layers"], ", "), f"{first['params']['adapter']:,}"
        cells = [f"{_NAMES.get(selector, selector)} {share}".strip(), blocks, params, accuracy, minus]
        if curve:
            cells.append(_repeats([f"{c['val_' + metric]:.2f}" for c in first["curve"]]))
        rows.append(cells)
    what = next(g.what for g in GRIDS[budget] if g.name == row)
    n, overrides = reference["after"]["n"], reference["overrides"]
    header = ["arm", "blocks", "adapter params", f"test {metric} ({seeds} seed{'s' * (seeds > 1)}"
              + (", mean ± half-range)" if seeds > 1 else ")"), "minus all (95% paired bootstrap)"]
    if curve:
        steps = [c["step"] for c in reference["curve"]]
        header.append(f"validation {metric} at steps {steps[0]}, {steps[1]}, ..., {steps[-1]}")
    where = f"_Measured on {machine}; budget `{budget}`, {row}: {what}, lr {overrides['train.lr']:g}, test n={n} " \
            f"(`benchmarks/reproduce/{budget}/{row}/`)._"
    return [where, ""] + _table(header, "llrll" + "l" * curve, rows)


TABLES: dict[str, tuple[tuple[str, ...], Callable[..., list[str]]]] = {
    "peer_step_time": (("peer_step_time.json", "peer_step_time_h100.json"), peer_step_time),
    "eval_speed": (("eval_speed.json",), eval_speed),
    "gpu_check": (("gpu_check.json",), gpu_check),
    "gpu_check_h200_single": (("gpu_check_h200_single.json",),
                              functools.partial(gpu_check, file="gpu_check_h200_single.json")),
    "selective_cost": (("selective_cost.json",), selective_cost),
    "demo_sarcasm": (("demo_sarcasm.json",), demo_sarcasm),
    "selection_cost": (("selection_cost.json",), selection_cost),
    "ranking_stability": (("ranking_stability.json", "ranking_stability_minilm-l6.json"), ranking_stability),
    "selector_accuracy": (("selector_accuracy.json",), selector_accuracy),
    "dynamic_selectors": (("dynamic_selectors.json",), dynamic_selectors),
    "distributed_cost": (("distributed_cost.json",), distributed_cost),
    "generative_math": (("generative_math.json",), generative_math),
    "memory_load": (("memory_levers.json",), memory_load),
    "memory_checkpointing": (("memory_levers.json",), memory_checkpointing),
    "memory_estimate": (("memory_levers.json",), memory_estimate),
    "sweep_front": (("sweep_pareto.json",), sweep_front),
    "sweep_hypervolume": (("sweep_pareto.json",), sweep_hypervolume),
    "sweep_halving": (("sweep_halving.json",), sweep_halving),
    "sweep_samplers": (("sweep_samplers.json",), sweep_samplers),
    "sweep_tiebreak": (("sweep_samplers.json", "sweep_samplers_tiebreak.json"), sweep_tiebreak),
    "sweep_cost_front": (("sweep_cost_front.json",), sweep_cost_front),
    "sweep_cost_repeats": (("sweep_cost_front.json",), sweep_cost_repeats),
    "selection_streaming": (("selection_streaming.json",), selection_streaming),
    "vision_colours": (("vision_colours.json",), vision_colours),
    "reproduce_encoder_gpu": (("reproduce/gpu-long/encoder",), functools.partial(
        reproduce_arms, budget="gpu-long", row="encoder",
        machine="one NVIDIA H200 (torch 2.11 + CUDA 13, bf16 frozen base, fp16-rounded weights)")),
    "reproduce_encoder_cpu": (("reproduce/cpu/encoder",), functools.partial(
        reproduce_arms, budget="cpu", row="encoder", machine=CPU, curve=True)),
    "reproduce_decoder_gpu": (("reproduce/gpu-decoder/decoder",), functools.partial(
        reproduce_arms, budget="gpu-decoder", row="decoder",
        machine="one NVIDIA H100 80GB (torch 2.11 + CUDA 13, bf16 frozen base)")),
}
"""Table name (as the marker in a docs/ page spells it) -> its JSON files and renderer."""


def render(name: str, directory: Path = HERE) -> list[str]:
    """Table ``name`` from the JSON in ``directory``; a note instead when a file or a section is missing."""
    files, renderer = TABLES[name]
    missing = [f for f in files if not (directory / f).exists()]
    if missing:
        return [f"_Not measured yet: `benchmarks/{missing[0]}` does not exist (run `benchmarks/{name}.py`)._"]
    try:
        return renderer(*(_load(directory / f) for f in files))
    except (KeyError, TypeError, StopIteration) as exc:
        return [f"_Not measured yet: `benchmarks/{files[0]}` has no {exc} (rerun `benchmarks/{name}.py`)._"]


def _load(path: Path) -> Any:
    """A benchmark's JSON file, or for a directory (a grid that writes one file per configuration)
    the list of its files' records."""
    if path.is_dir():
        return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))]
    return json.loads(path.read_text())
