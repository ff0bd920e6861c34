"""raylsl's training step against HF ``Trainer`` + peft on the identical run.

    python benchmarks/peer_step_time.py [--steps 14] [--warmup 2] [--repeats 2]

Both train SmolLM2-135M on sarcasm with the same examples in the same order (raylsl's seeded data
order, written out as the Trainer's dataset with a sequential sampler), the same tokens (raylsl's
tokenization: context, then the answer as labels; everything else -100), the same peft LoRA config
(r=8, alpha 16, dropout 0.05, every linear layer of the chosen blocks), batch 16, torch AdamW,
lr 5e-4 with warmup then cosine, clipping at 1.0, fp32, one process. The Trainer pads each batch
to its longest sequence (``DataCollatorForSeq2Seq``), as users run it. Each run is its own
subprocess; runs alternate (Trainer, raylsl, Trainer, raylsl, ...) so machine noise hits both.

Step time: the interval between consecutive step ends (data, forward, backward, optimizer,
everything), median over the steps after ``--warmup``. Memory: the peak resident set during
training (``VmHWM``, reset just before training starts; ``max_memory_allocated`` on GPU). The
first step's loss is printed for both, as a check that the two runs compute the same thing.
Writes ``benchmarks/peer_step_time.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
CONFIGS = {"all 30 blocks": "all", "upper 15 blocks": "15-29"}
BASE = {"model": "smollm2-135m", "task": "sarcasm", "data.test_size": 50, "data.val_size": 10,
        "data.max_length": 64, "train.batch_size": 16, "train.lr": 5e-4, "train.warmup_steps": 2,
        "train.checkpoint_every": 0, "eval_before": False}


def _setup(layers: str, steps: int, model_name: str, task: str):
    """The run both tools train: raylsl's plan assembled here (seeded peft LoRA on the chosen
    blocks; on GPU the frozen base in bf16)."""
    import torch

    from raylsl.assemble import assemble_here
    from raylsl.plan import load_run_config

    config = load_run_config(None, {**BASE, "model": model_name, "task": task, "layers": layers, "train.steps": steps})
    prepared = assemble_here(config)
    model = prepared.model
    model.train()
    return config, prepared, model, prepared.device, torch


def run_raylsl(layers: str, steps: int, model_name: str, task: str) -> dict:
    from raylsl.callbacks import Callback
    from raylsl.training.loop import peak_memory_mb, train_loop

    config, prepared, model, device, torch = _setup(layers, steps, model_name, task)
    ends: list[float] = []
    losses: list[float] = []

    class Clock(Callback):
        def on_step_end(self, state, metrics):
            ends.append(time.perf_counter())
            losses.append(metrics["loss"])

    with tempfile.TemporaryDirectory() as run_dir:
        ends.append(time.perf_counter())
        train_loop(model, prepared.objective, prepared.plan.task.train, config.train, Path(run_dir), (Clock(),),
                   progress=False)
    return {"step_ends": ends, "first_loss": losses[0], "peak_memory_mb": peak_memory_mb(device),
            "layout": prepared.objective.layout, "device": _device_name(torch, device)}


def run_trainer(layers: str, steps: int, model_name: str, task: str) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from raylsl.data import micro_batches
    from raylsl.training.loop import peak_memory_mb, reset_peak_memory

    config, prepared, model, device, torch = _setup(layers, steps, model_name, task)
    objective, train = prepared.objective, prepared.plan.task.train
    rows = []
    for step in range(steps):  # raylsl's data order, step by step
        for index in micro_batches(len(train), step, config.train)[0]:
            tokens = objective.tokens(train[index])
            rows.append({"input_ids": list(tokens.ids), "attention_mask": [1] * len(tokens.ids),
                         "labels": [t if target else -100 for t, target in zip(tokens.ids, tokens.targets)]})
    ends: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    settings = config.train
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=settings.batch_size, max_steps=steps,
            learning_rate=settings.lr, lr_scheduler_type="cosine", warmup_steps=settings.warmup_steps,
            weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm, optim="adamw_torch",
            logging_steps=1, save_strategy="no", report_to="none", use_cpu=device.type == "cpu",
            bf16=device.type == "cuda",  # the same bf16 autocast raylsl trains under on GPU
            dataloader_num_workers=0, seed=settings.seed, disable_tqdm=True, remove_unused_columns=False,
            train_sampling_strategy="sequential")
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(prepared.tokenizer, padding=True,
                                                               label_pad_token_id=-100),
                          callbacks=[Clock()])
        reset_peak_memory(device)
        ends.append(time.perf_counter())
        trainer.train()
    return {"step_ends": ends, "first_loss": losses[0], "peak_memory_mb": peak_memory_mb(device),
            "device": _device_name(torch, device)}


def _device_name(torch, device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _median_step(result: dict, warmup: int) -> float:
    ends = result["step_ends"]
    return statistics.median(b - a for a, b in zip(ends[warmup:], ends[warmup + 1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tool per configuration")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sarcasm")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--upper", default=CONFIGS["upper 15 blocks"], help="the partial configuration's blocks")
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        tool, layers = args.one
        print(json.dumps((run_trainer if tool == "trainer" else run_raylsl)(layers, args.steps, args.model, args.task)))
        return
    rows = {}
    configs = {"all 30 blocks": "all", "upper 15 blocks": args.upper} if args.upper == CONFIGS["upper 15 blocks"] \
        else {"all blocks": "all", f"blocks {args.upper}": args.upper}
    for name, layers in configs.items():
        runs: dict[str, list[dict]] = {"trainer": [], "raylsl": []}
        for repeat in range(args.repeats):
            for tool in ("trainer", "raylsl"):
                cmd = [sys.executable, __file__, "--one", tool, layers, "--steps", str(args.steps), "--model", args.model,
                       "--task", args.task]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result["median_step_s"] = _median_step(result, args.warmup)
                runs[tool].append(result)
                print(f"{name} {tool} run {repeat + 1}: {result['median_step_s']:.2f} s/step, "
                      f"peak {result['peak_memory_mb']:.0f} MB", file=sys.stderr, flush=True)
        ratios = [r["median_step_s"] / t["median_step_s"] for r, t in zip(runs["raylsl"], runs["trainer"])]
        memory = [r["peak_memory_mb"] / t["peak_memory_mb"] for r, t in zip(runs["raylsl"], runs["trainer"])]
        rows[name] = {"layers": layers, "runs": runs, "time_ratio": statistics.mean(ratios),
                      "time_ratios": ratios, "memory_ratio": statistics.mean(memory), "memory_ratios": memory}
    device = rows[next(iter(rows))]["runs"]["raylsl"][0]["device"]
    print(f"\nraylsl vs HF Trainer + peft, {args.model} + {args.task}, batch 16, {args.steps - args.warmup - 1} timed "
          f"step intervals x {args.repeats} runs each, device {device}")
    print(f"{'configuration':<16} {'Trainer s/step':>14} {'raylsl s/step':>13} {'time ratio':>16} "
          f"{'Trainer MB':>10} {'raylsl MB':>9} {'memory ratio':>12} {'first loss T / r':>18}")
    for name, row in rows.items():
        t = statistics.mean(r["median_step_s"] for r in row["runs"]["trainer"])
        r = statistics.mean(r["median_step_s"] for r in row["runs"]["raylsl"])
        tm = statistics.mean(x["peak_memory_mb"] for x in row["runs"]["trainer"])
        rm = statistics.mean(x["peak_memory_mb"] for x in row["runs"]["raylsl"])
        spread = f"{row['time_ratio']:.2f} ({min(row['time_ratios']):.2f}-{max(row['time_ratios']):.2f})"
        losses = f"{row['runs']['trainer'][0]['first_loss']:.4f} / {row['runs']['raylsl'][0]['first_loss']:.4f}"
        print(f"{name:<16} {t:>14.2f} {r:>13.2f} {spread:>16} {tm:>10.0f} {rm:>9.0f} {row['memory_ratio']:>12.2f} "
              f"{losses:>18}")
    args.out.write_text(json.dumps({"model": args.model, "task": args.task, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                               "device": device, "rows": rows}, indent=2))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
