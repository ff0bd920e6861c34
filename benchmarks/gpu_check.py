"""raylsl's training paths on a GPU: single process, Ray Train with DDP + IST, ZeRO-2, ZeRO-3.

    python benchmarks/gpu_check.py [--steps 40] [--model smollm2-135m] [--task sarcasm]
    python benchmarks/gpu_check.py --random-init-from DIR ...   # see below

Each configuration is one ``raylsl train`` subprocess (the command a user runs), on all 30
SmolLM2 blocks at batch 16, bf16 frozen base on the GPU (``train.precision=auto``):

    single    one process, no Ray
    ray-ist   Ray Train, 1 worker with 1 GPU (gpus_per_worker=auto finds it; NCCL), IST choosing 25% of the blocks per step
    zero2     Ray Train, 1 worker, DeepSpeed ZeRO-2
    zero3     Ray Train, 1 worker, DeepSpeed ZeRO-3 (the base built partitioned by zero.Init)

Step time is the median of ``step_time_s`` in the run's ``metrics.jsonl`` after ``--warmup``
steps (it arrives through Ray's checkpoints on the driver, so this also checks that path);
peak memory is ``torch.cuda.max_memory_allocated`` over training, as ``results.json`` reports it.
One GPU holds one NCCL rank, so the Ray runs have 1 worker: they check that the workers land
on the GPU, train in bf16 under NCCL and bring their results back, not multi-GPU scaling.

``--random-init-from DIR`` builds the model from ``DIR``'s ``config.json`` and tokenizer with
random weights first (for a GPU machine that cannot download or be sent the weights): step time
and memory depend on the architecture, not on the weights' values, so they are what the real
checkpoint gives; the JSON says which weights were used. Writes ``benchmarks/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
CONFIGS = {
    "single": [],
    "ray-ist": ["workers=1", "selector=ist", "n=0.25"],
    "zero2": ["workers=1", "deepspeed=zero2"],
    "zero3": ["workers=1", "deepspeed=zero3"],
}


def random_init(source: Path, target: Path) -> Path:
    """A model directory with ``source``'s architecture and tokenizer and random weights (kept,
    so that other benchmarks on the same machine can use it too)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file():
        return target
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def run(name: str, args, out_dir: Path) -> dict:
    overrides = [f"model={args.model}", f"task={args.task}", "layers=all", f"train.steps={args.steps}",
                 f"train.batch_size={args.batch}", "train.checkpoint_every=0", "eval_before=false",
                 "data.test_size=200", "data.val_size=64", "data.max_length=64", f"output_dir={out_dir / name}",
                 *CONFIGS[name]]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raylsl", "train", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"config": name, "error": (proc.stdout + proc.stderr)[-3000:], "wall_time_s": wall}
    run_dir = next((out_dir / name).glob("*/results.json")).parent
    results = json.loads((run_dir / "results.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [s["step_time_s"] for s in steps[args.warmup:]]
    return {"config": name, "overrides": CONFIGS[name], "device": results["device"],
            "median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
            "steps_timed": len(times), "peak_gpu_memory_mb": results["train"]["peak_memory_mb"],
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"], "after": results["after"],
            "zero3_base_fraction_per_rank": results.get("zero3_base_fraction_per_rank"), "wall_time_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sarcasm")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--random-init-from", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cpu", action="store_true", help="run on CPU anyway (to check this script, not to measure)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        sys.exit("gpu_check: no CUDA device here; run it on a GPU machine")
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    weights = "pretrained"
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_init_from is not None:
            target = args.random_init_from.parent / f"{args.random_init_from.name}-random"
            args.model = str(random_init(args.random_init_from, target))
            weights = f"random init with the architecture and tokenizer of {args.random_init_from.name}"
        rows = []
        for name in args.configs.split(","):
            rows.append(run(name, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    single = next((r for r in rows if r["config"] == "single" and "error" not in r), None)
    print(f"\n{card}  ({weights}; {args.steps} steps, batch {args.batch}, median after {args.warmup})")
    print(f"{'config':10} {'s/step':>8} {'x single':>9} {'peak MB':>9} {'last loss':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']:10} FAILED: {r['error'][-300:]}")
            continue
        ratio = r["median_step_s"] / single["median_step_s"] if single else float("nan")
        print(f"{r['config']:10} {r['median_step_s']:8.4f} {ratio:9.2f} {r['peak_gpu_memory_mb']:9.0f} "
              f"{r['last_loss']:10.4f}")
    args.out.write_text(json.dumps({"card": card, "weights": weights, "torch": torch.__version__,
                                    "model": args.model if args.random_init_from is None else args.random_init_from.name,
                                    "task": args.task, "steps": args.steps, "batch": args.batch,
                                    "warmup": args.warmup, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
