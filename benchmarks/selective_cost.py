"""Cost of selective LoRA: step time and training memory vs which blocks carry adapters.

    python benchmarks/selective_cost.py [--model smollm2-135m] [--steps 8] [--warmup 2]

Each configuration runs in its own subprocess (so memory peaks do not mix) through the real
training loop: LoRA r=8 on all 30 blocks, the upper 15, the lower 15 and the last 8. Step time is
the mean over the steps after ``--warmup``; memory is the peak resident set above the resident set
measured just before training starts (activations, gradients, optimizer state), sampled every 5 ms
on CPU, ``max_memory_allocated`` on GPU. Results print as a table of ratios to all-blocks and go
to ``benchmarks/selective_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONFIGS = {"all": "all", "upper-15": "15-29", "lower-15": "0-14", "last-8": "22-29"}
OUT = Path(__file__).with_suffix(".json")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def measure(model: str, layers: str, steps: int, warmup: int, batch_size: int) -> dict:
    """One configuration, in this process."""
    import torch

    from raylsl.assemble import assemble_here
    from raylsl.lora import count_trainable
    from raylsl.plan import load_run_config
    from raylsl.training.loop import train_loop

    config = load_run_config(None, {"model": model, "layers": layers, "data.test_size": 50, "data.val_size": 10,
                                "data.max_length": 64, "train.steps": steps, "train.batch_size": batch_size,
                                "train.checkpoint_every": 0, "train.warmup_steps": 1})
    prepared = assemble_here(config)  # seeded LoRA on the chosen blocks, on this machine's accelerator
    lora = prepared.model
    cuda = torch.cuda.is_available()
    baseline = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    if not cuda:
        sampler.start()
    else:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        train_loop(lora, prepared.objective, prepared.plan.task.train, config.train, Path(run_dir), progress=False)
        times = [json.loads(line)["step_time_s"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    done.set()
    if cuda:
        peak[0] = torch.cuda.max_memory_allocated() / 2**20
    return {"layers": layers, "step_time_s": sum(times[warmup:]) / len(times[warmup:]),
            "train_memory_mb": peak[0] - baseline, "adapter_params": count_trainable(lora)["adapter"],
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one layer spec
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.one, args.steps, args.warmup, args.batch_size)))
        return
    rows = {}
    for name, layers in CONFIGS.items():
        cmd = [sys.executable, __file__, "--one", layers, "--model", args.model, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"measured {name}: {rows[name]['step_time_s']:.2f} s/step", file=sys.stderr, flush=True)
    ref = rows["all"]
    print(f"\nselective LoRA cost, {args.model}, batch {args.batch_size}, {args.steps - args.warmup} timed steps, "
          f"device {ref['device']}")
    print(f"{'blocks':<10} {'layers':<7} {'adapter params':>14} {'s/step':>7} {'time x':>7} {'train MB':>9} {'mem x':>6}")
    for name, row in rows.items():
        row["time_ratio"] = row["step_time_s"] / ref["step_time_s"]
        row["memory_ratio"] = row["train_memory_mb"] / ref["train_memory_mb"]
        print(f"{name:<10} {row['layers']:<7} {row['adapter_params']:>14,} {row['step_time_s']:>7.2f} "
              f"{row['time_ratio']:>7.2f} {row['train_memory_mb']:>9.0f} {row['memory_ratio']:>6.2f}")
    OUT.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
                               "warmup": args.warmup, "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
