"""Distributed cost on SmolLM2, CPU: Ray Train workers with DDP and DeepSpeed ZeRO 0-3.

    python benchmarks/distributed_cost.py [--steps 6] [--warmup 2]

Every run trains configs/sarcasm-smollm2.yaml through Ray Train with the same global batch (16):
1 worker x 16 (plain loop), 2 workers x 8 with DDP and with ZeRO stages 0-3 (all 30 blocks), and
the upper 15 blocks vs all 30 under ZeRO-2. Step time is the mean after ``--warmup`` steps;
memory is rank 0's peak resident set (ru_maxrss: model load included, so differences are what
training adds). On 2 cores, two workers share the machine: this measures overhead, not speed-up.
Writes ``benchmarks/distributed_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from raylsl.config import load_config
from raylsl.recipes.train import train

OUT = Path(__file__).with_suffix(".json")
RUNS = [
    ("1 worker", {"workers": 1, "train.batch_size": 16}),
    ("2 workers DDP", {"workers": 2}),
    ("2 workers zero0", {"workers": 2, "deepspeed": "zero0"}),
    ("2 workers zero1", {"workers": 2, "deepspeed": "zero1"}),
    ("2 workers zero2", {"workers": 2, "deepspeed": "zero2"}),
    ("2 workers zero3", {"workers": 2, "deepspeed": "zero3"}),
    ("zero2, blocks 15-29", {"workers": 2, "deepspeed": "zero2", "layers": "15-29"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for i, (label, overrides) in enumerate(RUNS):
            config = load_config("configs/sarcasm-smollm2.yaml", {
                "layers": "all", "train.batch_size": 8, **overrides, "train.steps": args.steps,
                "train.checkpoint_every": 0, "train.warmup_steps": 1, "data.test_size": 50,
                "eval_before": False, "output_dir": out_dir, "name": f"run{i}"})
            r = train(config, progress=False)
            lines = (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            times = [json.loads(line)["step_time_s"] for line in lines][args.warmup:]
            rows.append({"run": label, "layers": config.layers, "workers": config.workers,
                         "deepspeed": config.deepspeed, "step_time_s": sum(times) / len(times),
                         "peak_rss_mb_rank0": r["train"]["peak_memory_mb"], "adapter_params": r["params"]["adapter"]})
            print(f"done {label}: {rows[-1]['step_time_s']:.2f} s/step", flush=True)
    ref = rows[0]
    print(f"\nSmolLM2-135M, CPU (2 cores), global batch 16, {args.steps - args.warmup} timed steps")
    print(f"{'run':<20} {'s/step':>7} {'time x':>7} {'rank0 peak MB':>13}")
    for row in rows:
        row["time_ratio"] = row["step_time_s"] / ref["step_time_s"]
        print(f"{row['run']:<20} {row['step_time_s']:>7.2f} {row['time_ratio']:>7.2f} {row['peak_rss_mb_rank0']:>13.0f}")
    z2, z2_sel = rows[4], rows[6]
    ratio = z2_sel["step_time_s"] / z2["step_time_s"]
    print(f"\nZeRO-2, upper 15 blocks vs all 30: {ratio:.2f}x step time")
    OUT.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "rows": rows,
                               "zero2_selective_over_all": ratio}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
