"""SmolLM2-135M-Instruct on the built-in arithmetic task: exact match and held-out loss before and
after LoRA on all 30 blocks, on the 15 blocks CKA chooses, and on the upper 15.

    python benchmarks/generative_math.py [--steps 100] [--test 200]

Every arm uses configs/arithmetic-smollm2.yaml with the same steps, seed, data order and LoRA
settings; only the blocks differ. Exact match is greedy generation scored against the reference
answer (``#### N``); its standard error is sqrt(p(1-p)/n) over the n test problems. Also measures
generation throughput (new tokens per second) of the evaluation's batched, KV-cached greedy
decoding against one prompt at a time. Each arm is saved to the JSON as soon as it finishes, and a
rerun skips the arms already there (``--fresh`` starts over). Writes
``benchmarks/generative_math.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

from raylsl.config import load_config
from raylsl.data import load_task
from raylsl.models import resolve_model
from raylsl.objective import run_objective
from raylsl.recipes.train import train
from raylsl.results import format_layers

OUT = Path(__file__).with_suffix(".json")
CONFIG = "configs/arithmetic-smollm2.yaml"
ARMS = {"all 30": {"layers": "all"}, "cka 50%": {"selector": "cka", "n": 0.5, "layers": "all"},
        "upper 15": {"layers": "15-29"}}


def stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def throughput(config, prompts: int = 48) -> dict:
    """New tokens per second of greedy decoding: batched (the evaluation's batch size) vs one prompt
    at a time, on the first test prompts, base model."""
    spec = resolve_model(config.model.name)
    model, tokenizer = spec.load()
    model.eval()
    task = load_task(config.task, config.data)
    objective = run_objective(spec.kind, tokenizer, config, True)
    ids = [objective.prompt_ids(ex) for ex in task.test[:prompts]]
    out = {}
    for name, size in (("batched", config.train.eval_batch_size), ("one at a time", 1)):
        started, new = time.perf_counter(), 0
        for i in range(0, len(ids), size):
            for text in objective.generate(model, ids[i:i + size]):
                new += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + the end of turn
        seconds = time.perf_counter() - started
        out[name] = {"batch": size, "prompts": len(ids), "new_tokens": new, "seconds": seconds,
                     "tokens_per_s": new / seconds}
    out["speedup"] = out["batched"]["tokens_per_s"] / out["one at a time"]["tokens_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--test", type=int, default=200, help="test problems")
    parser.add_argument("--fresh", action="store_true", help="ignore arms already in the JSON")
    args = parser.parse_args()
    settings = {"steps": args.steps, "data.test_size": args.test, "data.val_size": 50}
    saved = {} if args.fresh or not OUT.is_file() else json.loads(OUT.read_text())
    if saved.get("settings") != settings:
        saved = {}
    saved.update(settings=settings, machine=f"{platform.machine()}, {torch.get_num_threads()} threads")
    base_config = load_config(CONFIG, {"train.steps": args.steps, "data.test_size": args.test, "data.val_size": 50})

    def save() -> None:
        OUT.write_text(json.dumps(saved, indent=2))

    if "throughput" not in saved:
        saved["throughput"] = throughput(base_config)
        save()
    arms = saved.setdefault("arms", {})
    with tempfile.TemporaryDirectory() as out_dir:
        for i, (name, choice) in enumerate(ARMS.items()):
            if name in arms:
                continue
            config = load_config(CONFIG, {**choice, "train.steps": args.steps, "data.test_size": args.test,
                                          "data.val_size": 50, "output_dir": out_dir, "name": f"arm{i}",
                                          "eval_before": "before" not in saved})
            started = time.perf_counter()
            r = train(config, progress=False)
            saved.setdefault("before", r["before"])
            arms[name] = {"layers": r["layers"], "adapter_params": r["params"]["adapter"], "after": r["after"],
                          "selection_time_s": r["selection_time_s"], "train_time_s": r["train"]["train_time_s"],
                          "wall_s": time.perf_counter() - started}
            save()
            print(f"done {name}: exact match {r['after']['exact_match']:.3f}, loss {r['after']['loss']:.3f}", flush=True)
    report(saved)


def report(saved: dict) -> None:
    before, n = saved["before"], saved["before"]["n"]
    print(f"\nSmolLM2-135M-Instruct, arithmetic (chat), {saved['settings']['steps']} steps x batch 8, "
          f"test n={n}; {saved['machine']}")
    print(f"{'blocks':<10} {'chosen':<24} {'params':>10} {'exact match':>16} {'loss':>7} {'train s':>8}")
    em = before["exact_match"]
    print(f"{'base':<10} {'-':<24} {0:>10,} {em:>9.3f} ± {stderr(em, n):.3f} {before['loss']:>7.3f} {'-':>8}")
    for name, arm in saved["arms"].items():
        em = arm["after"]["exact_match"]
        print(f"{name:<10} {format_layers(arm['layers']):<24} {arm['adapter_params']:>10,} {em:>9.3f} ± "
              f"{stderr(em, n):.3f} {arm['after']['loss']:>7.3f} {arm['train_time_s']:>8.0f}")
    t = saved["throughput"]
    print(f"\ngeneration: batched (batch {t['batched']['batch']}) {t['batched']['tokens_per_s']:.1f} new tokens/s, "
          f"one at a time {t['one at a time']['tokens_per_s']:.1f} tokens/s ({t['speedup']:.2f}x), "
          f"{t['batched']['prompts']} prompts")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
