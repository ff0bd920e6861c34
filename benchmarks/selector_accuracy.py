"""Accuracy vs trainable parameters on SmolLM2 + sarcasm, per selector, at 25% and 50% of blocks.

    python benchmarks/selector_accuracy.py [--steps 60]

Every run uses configs/sarcasm-smollm2.yaml (same steps, seed, data, LoRA settings); only the
block choice differs: cka, activation, gradient, first, last, random at n=0.25 and n=0.5, and
all 30 blocks. Scores are cached, so each data-driven selector scores once for both budgets.
Writes ``benchmarks/selector_accuracy.json``.
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
SELECTORS = ("cka", "activation", "gradient", "first", "last", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    runs = [("all", None, {"layers": "all"})]
    runs += [(name, n, {"selector": name, "n": n, "layers": "all"}) for n in (0.25, 0.5) for name in SELECTORS]
    rows, before = [], None
    with tempfile.TemporaryDirectory() as out_dir:
        for i, (name, n, choice) in enumerate(runs):
            config = load_config("configs/sarcasm-smollm2.yaml", {
                **choice, "train.steps": args.steps, "output_dir": out_dir, "name": f"run{i}",
                "eval_before": i == 0})
            r = train(config, progress=False)
            before = before or r["before"]
            rows.append({"selector": name, "n": n, "layers": r["layers"], "adapter_params": r["params"]["adapter"],
                         "acc": r["after"]["acc"], "acc_norm": r["after"]["acc_norm"],
                         "selection_time_s": r["selection_time_s"], "train_time_s": r["train"]["train_time_s"]})
            print(f"done {name} n={n}: acc {r['after']['acc']:.3f}", flush=True)
    ref = rows[0]
    print(f"\nSmolLM2-135M + sarcasm, {args.steps} steps, test n=500; base model acc {before['acc']:.3f}")
    print(f"{'selector':<11} {'n':>5} {'blocks':<22} {'params':>10} {'% of all':>8} {'acc':>6} {'acc-all':>8}")
    for row in rows:
        row["param_fraction"] = row["adapter_params"] / ref["adapter_params"]
        row["acc_minus_all"] = row["acc"] - ref["acc"]
        print(f"{row['selector']:<11} {str(row['n'] or 'all'):>5} {format_layers(row['layers']):<22} "
              f"{row['adapter_params']:>10,} {100 * row['param_fraction']:>7.0f}% {row['acc']:>6.3f} "
              f"{row['acc_minus_all']:>+8.3f}")
    OUT.write_text(json.dumps({"steps": args.steps, "base_acc": before, "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
