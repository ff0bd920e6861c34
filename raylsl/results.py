"""A finished run's results: what ``results.json`` holds and the summary ``raylsl train`` prints."""

from __future__ import annotations

from typing import Any

from raylsl.plan import Plan


def format_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans: list[list[int]] = []
    for i in layers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def run_results(plan: Plan, outcome: dict[str, Any], wall_time_s: float, run_dir: str) -> dict[str, Any]:
    """``results.json``: the plan's choices, the session's measurements (`raylsl.training.session`)
    and what the run cost."""
    config = plan.config
    return {
        "model": config.model.name, "task": config.task.name, "layers": list(plan.layers),
        "adapted_blocks": outcome["adapted_blocks"], "num_blocks": plan.num_blocks, "lora_r": config.lora.r,
        "params": outcome["params"], "before": outcome["before"], "after": outcome["after"],
        "after_per_example": outcome.get("after_per_example"), "eval_split": config.eval_split,
        "train": outcome["train"], "costs": outcome["train"].get("costs"), "selector": config.selector,
        "selection_time_s": plan.selection.seconds if plan.selection else 0.0,
        "selection_cached": plan.selection.cached if plan.selection else None, "dynamic": outcome["dynamic"],
        "workers": config.workers, "deepspeed": config.deepspeed, "device": outcome.get("device"),
        "zero3_base_fraction_per_rank": outcome.get("zero3_base_fraction_per_rank"),
        "checkpointed_blocks": outcome.get("checkpointed_blocks", []),
        "wall_time_s": wall_time_s, "run_dir": run_dir, "storage": plan.storage,
    }


def summary(results: dict[str, Any]) -> str:
    """Human-readable summary of a finished run."""
    p, before, after = results["params"], results["before"], results["after"]
    chosen_by = f"chosen by {results['selector']} in {results['selection_time_s']:.1f} s" if results["selector"] else "as configured"
    lines = [
        f"model {results['model']}  task {results['task']}  blocks {format_layers(results['layers'])} "
        f"({len(results['layers'])}/{results['num_blocks']}, {chosen_by})",
        f"trainable parameters: {p['trainable']:,} (adapters {p['adapter']:,}, head {p['head']:,}) "
        f"= {100 * p['trainable'] / p['total']:.3f}% of {p['total']:,}",
    ]
    for metric in after:
        if metric == "n":
            continue
        was = f"{before[metric]:.4f} -> " if before and metric in before else ""
        lines.append(f"{results.get('eval_split', 'test')} {metric}: {was}{after[metric]:.4f}  (n={after['n']})")
    t = results["train"]
    lines.append(f"time: train {t['train_time_s']:.1f} s ({t['steps']} steps, "
                 f"{t['train_time_s'] / max(t['steps'] - t['resumed_from'], 1):.2f} s/step), "
                 f"total {results['wall_time_s']:.1f} s; peak memory {t['peak_memory_mb']:.0f} MB")
    costs = results.get("costs")
    if costs:
        estimated = costs.get("estimated_memory")
        lines.append(f"costs: peak memory {costs['peak_memory'] / 2**20:.0f} MiB ({costs['peak_memory_source']})"
                     + (f", estimated {estimated / 2**20:.0f} MiB" if estimated else "")
                     + f"; step time {costs['step_time']:.3f} s median of {costs['timed_steps']} steps "
                     f"(spread {costs['step_time_spread']:.0%}); {costs['tokens_per_second']:.0f} tokens/s")
    lines.append(f"run directory: {results['run_dir']}" + (f"  (storage: {results['storage']})"
                                                             if results.get("storage") not in (None, results["run_dir"]) else ""))
    return "\n".join(lines)
