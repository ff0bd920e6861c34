"""The demo's numbers: SmolLM2-135M on sarcasm, LoRA on the upper 15 of 30 blocks vs all 30.

    python benchmarks/demo_sarcasm.py [--steps 60]

Both runs use configs/sarcasm-smollm2.yaml (same steps, seed, data); only ``layers`` differs.
Prints a table and writes ``benchmarks/demo_sarcasm.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raylsl.config import load_config
from raylsl.recipes.train import train

OUT = Path(__file__).with_suffix(".json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as out_dir:
        for layers in ("15-29", "all"):
            config = load_config("configs/sarcasm-smollm2.yaml", {
                "layers": layers, "train.steps": args.steps, "output_dir": out_dir, "name": layers})
            r = train(config, progress=False)
            rows[layers] = {"layers": layers, "adapter_params": r["params"]["adapter"],
                            "acc_before": r["before"]["acc"], "acc_after": r["after"]["acc"],
                            "acc_norm_after": r["after"]["acc_norm"], "n_test": r["after"]["n"],
                            "train_time_s": r["train"]["train_time_s"], "wall_time_s": r["wall_time_s"]}
    ref = rows["all"]
    print(f"\nSmolLM2-135M, sarcasm, {args.steps} steps x batch 16, test n={ref['n_test']}")
    print(f"{'layers':<7} {'adapter params':>14} {'acc before':>10} {'acc after':>9} {'train s':>8} {'time x':>7}")
    for row in rows.values():
        row["time_ratio"] = row["train_time_s"] / ref["train_time_s"]
        print(f"{row['layers']:<7} {row['adapter_params']:>14,} {row['acc_before']:>10.3f} {row['acc_after']:>9.3f} "
              f"{row['train_time_s']:>8.0f} {row['time_ratio']:>7.2f}")
    OUT.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
