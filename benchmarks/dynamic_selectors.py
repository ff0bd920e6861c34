"""Dynamic selectors on SmolLM2 + sarcasm: the IST paper's ablation (its Table 4) and overheads.

    python benchmarks/dynamic_selectors.py [--steps 60]
    python benchmarks/dynamic_selectors.py --overhead [--steps 30]   # timing only: all vs ist 25%

Runs configs/sarcasm-smollm2.yaml with adapters on every block (same steps, seed, data):
all blocks trained every step, lisa (random blocks, redrawn every 20 steps) and ist (T_c=10,
N_c=3, beta=0.25, mu=10) at 25% and 50% of blocks per step, and flexora (n=15): search stage,
then a fresh fine-tune of the chosen blocks. Reports test accuracy, parameters, IST's wall time
against all blocks (the paper: about +2%) and Flexora's search cost as a fraction of its
fine-tune. Writes ``benchmarks/dynamic_selectors.json`` (``--overhead``: ``dynamic_overhead.json``,
the two timing runs alone, for a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raylsl.config import load_config
from raylsl.recipes.train import train
from raylsl.results import format_layers

OUT = Path(__file__).with_suffix(".json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--overhead", action="store_true", help="only all blocks vs ist 25%%, for timing")
    args = parser.parse_args()
    runs = [("all", {})]
    if args.overhead:
        runs.append(("ist 25%", {"selector": "ist", "ist.n_update": 0.25}))
    else:
        for share in (0.25, 0.5):
            runs += [(f"lisa {share:.0%}", {"selector": "lisa", "lisa.n_active": share}),
                     (f"ist {share:.0%}", {"selector": "ist", "ist.n_update": share})]
        runs.append(("flexora n=15", {"selector": "flexora", "n": 15}))
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for i, (label, choice) in enumerate(runs):
            config = load_config("configs/sarcasm-smollm2.yaml", {
                "layers": "all", **choice, "train.steps": args.steps, "output_dir": out_dir, "name": f"run{i}",
                "eval_before": False})
            r = train(config, progress=False)
            dyn = r["dynamic"] or {}
            rows.append({"run": label, "layers": format_layers(r["layers"]), "acc": r["after"]["acc"],
                         "adapter_params": r["params"]["adapter"],
                         "updated_per_step": dyn.get("adapter_params_updated_per_step", r["params"]["adapter"]),
                         "train_time_s": r["train"]["train_time_s"], "selection_time_s": r["selection_time_s"]})
            print(f"done {label}: acc {r['after']['acc']:.3f}", flush=True)
    ref = rows[0]
    print(f"\nSmolLM2-135M + sarcasm, {args.steps} steps, test n=500")
    print(f"{'run':<13} {'blocks':<12} {'adapters':>10} {'updated/step':>12} {'acc':>6} {'train s':>8} {'time x':>7}")
    for row in rows:
        row["time_ratio"] = row["train_time_s"] / ref["train_time_s"]
        print(f"{row['run']:<13} {row['layers']:<12} {row['adapter_params']:>10,} {row['updated_per_step']:>12,.0f} "
              f"{row['acc']:>6.3f} {row['train_time_s']:>8.0f} {row['time_ratio']:>7.2f}")
    out = OUT.with_name("dynamic_overhead.json") if args.overhead else OUT
    if not args.overhead:
        flex = rows[-1]
        flex["search_over_finetune"] = flex["selection_time_s"] / flex["train_time_s"]
        print(f"\nflexora search stage: {flex['selection_time_s']:.0f} s = {flex['search_over_finetune']:.2f}x its fine-tune")
    out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
