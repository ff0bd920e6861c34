"""A small random LLaVA-style model (8 Llama blocks of width 64, a 2-block CLIP vision tower) on a
generated image+text task: which of 6 colours a square shows, as multiple-choice rows with the
image (ScienceQA's shape). LoRA on all 8 language blocks, on the 4 CKA chooses from image+text
calibration data, and on the last 4; accuracy and step time, with their ratios to all blocks.

    python benchmarks/vision_colours.py [--steps 60] [--rows 480] [--threads 1]

Every arm trains with the same steps, seed, data order and LoRA settings (dropout 0); only the
blocks differ. Accuracy is the argmax of the choices' summed log-likelihood on the test split, with
its standard error sqrt(p(1-p)/n). Step time is the median ``step_time_s`` of the steps after the
first two, in one process on the CPU with ``--threads`` torch threads; on a shared machine other
processes' load distorts it. The model is random (built from its config classes, nothing
downloaded): the task is learnable because the frozen random vision tower still maps different
colours to different features. Writes ``benchmarks/vision_colours.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import tempfile
from pathlib import Path

import torch
from PIL import Image

from raylsl.config import load_config
from raylsl.models.registry import save_to_cache
from raylsl.models.vision import tiny_vlm
from raylsl.recipes.train import train

OUT = Path(__file__).with_suffix(".json")
COLOURS = {"red": (210, 40, 40), "orange": (230, 130, 30), "yellow": (225, 215, 40), "green": (40, 170, 60),
           "blue": (40, 70, 210), "purple": (140, 50, 170)}
ARMS = {"all 8": {"layers": "all"}, "cka 50%": {"selector": "cka", "n": 0.5}, "last 4": {"layers": "4-7"}}


def write_task(root: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` squares of a colour each (every channel jittered by up to 35, sizes 20-40 pixels)."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True)
    with (root / "colours.jsonl").open("w") as fh:
        for i in range(rows):
            name = rng.choice(list(COLOURS))
            rgb = tuple(min(255, max(0, c + rng.randint(-35, 35))) for c in COLOURS[name])
            Image.new("RGB", (rng.randint(20, 40), rng.randint(20, 40)), rgb).save(root / "img" / f"{i}.png")
            fh.write(json.dumps({"question": "What colour is this?", "choices": list(COLOURS),
                                 "answer": list(COLOURS).index(name), "image": f"img/{i}.png"}) + "\n")
    return root / "colours.jsonl"


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def run_arm(model: Path, task: Path, out: Path, steps: int, arm: dict) -> dict:
    config = load_config(None, {
        "model": str(model), "task.name": str(task), "task.context_field": "question", "task.label_field": "answer",
        "output_dir": str(out), "data.test_size": 120, "data.val_size": 40, "data.max_length": 64,
        "train.steps": steps, "train.batch_size": 16, "train.lr": 5e-3, "train.warmup_steps": 5,
        "train.checkpoint_every": 0, "train.eval_batch_size": 40, "lora.dropout": 0.0, "calibration.size": 64, **arm})
    results = train(config, progress=False)
    lines = (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    step_times = [json.loads(line)["step_time_s"] for line in lines][2:]
    n = results["after"]["n"]
    return {"layers": results["layers"], "trainable": results["params"]["adapter"],
            "acc_before": results["before"]["acc"], "acc": results["after"]["acc"],
            "acc_stderr": stderr(results["after"]["acc"], n), "loss_before": results["before"]["loss"],
            "loss": results["after"]["loss"], "n": n, "step_time_s": statistics.median(step_times),
            "selection_s": results["selection_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rows", type=int, default=480)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "llava-8x64"
        save_to_cache(*tiny_vlm("llava", hidden=64, layers=8, vision_layers=2), model)
        task = write_task(root / "data", args.rows)
        for name, arm in ARMS.items():
            arms[name] = run_arm(model, task, root / "runs", args.steps, arm)
            print(name, json.dumps(arms[name]), flush=True)
    base = arms["all 8"]
    for arm in arms.values():
        arm["acc_ratio"] = arm["acc"] / base["acc"] if base["acc"] else math.nan
        arm["step_time_ratio"] = arm["step_time_s"] / base["step_time_s"]
    OUT.write_text(json.dumps({
        "model": "random LLaVA-style: 8 Llama blocks (width 64), 2-block CLIP vision tower, 28-pixel images",
        "task": f"{args.rows} generated squares, 6 colours, multiple choice with the image (120 test, 40 validation)",
        "steps": args.steps, "batch_size": 16, "torch_threads": args.threads, "machine": platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "note": "CPU step times on a shared 2-core machine: other processes' load distorts them",
        "arms": arms}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
