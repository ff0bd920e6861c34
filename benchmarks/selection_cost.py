"""Selection cost on SmolLM2 + sarcasm (128 calibration examples), per selector, as a fraction of
the wall time of the training run it configures (configs/sarcasm-smollm2.yaml with n=15).

    python benchmarks/selection_cost.py [--steps 60] [--timed-steps 4]

Both are measured in this run: each selector once without cache, then ``--timed-steps`` real
training steps of the configured run; the run's train time is steps x measured seconds per step.
Writes ``benchmarks/selection_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import Bench

from raylsl.config import load_config
from raylsl.lora import apply_lora
from raylsl.assemble import seed_everything
from raylsl.training.loop import train_loop

OUT = Path(__file__).with_suffix(".json")
SELECTORS = ("cka", "activation", "gradient")


def step_time(bench: Bench, layers: list[int], timed_steps: int) -> float:
    config = load_config("configs/sarcasm-smollm2.yaml", {"train.steps": timed_steps + 1, "train.checkpoint_every": 0})
    seed_everything(0)
    model = apply_lora(bench.model, layers, config.lora, "model.layers", bench.blocks, "decoder")
    with tempfile.TemporaryDirectory() as run_dir:
        train_loop(model, bench.objective, bench.train_split("sarcasm"), config.train, Path(run_dir), progress=False)
        times = [json.loads(l)["step_time_s"] for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    model.unload()  # back to the plain base model
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps of the configured training run")
    parser.add_argument("--timed-steps", type=int, default=4)
    args = parser.parse_args()
    bench = Bench()
    rows = {}
    for name in SELECTORS:
        started = time.perf_counter()
        sel = bench.select(name, n=15)
        rows[name] = {"seconds": time.perf_counter() - started, "layers": sel.layers}
    per_step = step_time(bench, rows["cka"]["layers"], args.timed_steps)
    train_s = per_step * args.steps
    print(f"\nselection cost, SmolLM2-135M + sarcasm, 128 calibration examples; training run: {args.steps} steps x "
          f"{per_step:.2f} s = {train_s:.0f} s (15 blocks, batch 16)")
    print(f"{'selector':<11} {'seconds':>8} {'% of training':>14}")
    for name, row in rows.items():
        row["fraction_of_training"] = row["seconds"] / train_s
        print(f"{name:<11} {row['seconds']:>8.1f} {100 * row['fraction_of_training']:>13.1f}%")
    OUT.write_text(json.dumps({"steps": args.steps, "step_time_s": per_step, "train_time_s": train_s,
                               "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
