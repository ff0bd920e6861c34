"""Scoring time and peak memory on the CPU: the whole model vs one block at a time (same run).

    python benchmarks/selection_streaming.py [--size 128] [--deep-size 16]

- **SmolLM2-135M** (fp32, sarcasm, ``--size`` calibration examples), CKA and activation: the
  whole-model pass (load, then one forward per batch) and the streamed one (`raylsl.scoring`'s
  ``open_stream``: a skeleton, then block by block from the safetensors), their seconds, peak
  memory and ratio, and the largest difference between their scores.
- **Llama-3.1-70B's shape at a quarter of its widths** (hidden 2048, intermediate 7168, vocabulary
  32064, 16 heads, 2 KV heads, all 80 blocks; 4.4B parameters, 17.6 GB in fp32: more than this
  machine can spare), random weights built block by block, CKA streamed alone: that it runs, in
  what time and memory.

Each measurement runs in a fresh process; its peak memory is the growth of the process's peak
resident set (``ru_maxrss``) over what it held before the model was touched (Python, torch, the
task, the tokenizer). On a shared machine the seconds depend on the other processes' load (the load
average at the start and end is recorded). Writes ``benchmarks/selection_streaming.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
SMOLLM2 = [("cka", "whole"), ("cka", "streamed"), ("activation", "whole"), ("activation", "streamed")]
QUARTER = 4


def measure(case: str, selector: str, mode: str, size: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from raylsl.config import CalibrationSettings, DataSettings, TaskSettings
    from raylsl.data import load_task
    from raylsl.models import find_blocks, resolve_model
    from raylsl.models.loading import LoadOptions
    from raylsl.models.memory import weight_bytes
    from raylsl.models.registry import byte_tokenizer, model_class
    from raylsl.objective import make_objective
    from raylsl.scoring import open_stream
    from raylsl.selectors import Budget, build_selector, select_blocks
    from raylsl.selectors.streaming import BlockStream, skeleton

    train = load_task(TaskSettings(name="sarcasm"), DataSettings()).train
    spec = resolve_model("smollm2-135m")
    tokenizer = spec.tokenizer() if case == "smollm2" else byte_tokenizer()
    objective = make_objective("decoder", tokenizer, 64)
    before = _max_rss()
    started = time.perf_counter()
    stream = None
    if case == "smollm2" and mode == "whole":
        model = spec.load(LoadOptions())[0]
    elif case == "smollm2":
        stream = open_stream(spec, LoadOptions())
        model = stream.model
    else:
        config = _quarter_70b()
        model = skeleton(model_class("decoder", config), config, LoadOptions(weights="random"), "llama-3.1-70b/4")
        stream = BlockStream(model, None, None, torch.device("cpu"), torch.float32)
    blocks = stream.blocks if stream else find_blocks(model)[1]
    selection = select_blocks(model, blocks, objective, train, build_selector(selector), Budget(0.5),
                              CalibrationSettings(size=size), None, 64, use_cache=False,
                              model_key="bench" if stream else None, stream=stream)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_bytes": _max_rss() - before, "scores": list(selection.scores.scores),
            "weights_bytes": weight_bytes(model, torch.float32),
            "largest_part_bytes": stream.peak_part_bytes if stream else None,
            "blocks": len(blocks), "calibration_examples": size}


def _quarter_70b():
    from raylsl.models import resolve_model

    config = resolve_model("llama-3.1-70b").config()
    config.hidden_size //= QUARTER
    config.intermediate_size //= QUARTER
    config.vocab_size //= QUARTER
    config.num_attention_heads //= QUARTER
    config.num_key_value_heads //= QUARTER
    return config


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(case: str, selector: str, mode: str, size: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps([case, selector, mode, size])],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="calibration examples for SmolLM2")
    parser.add_argument("--deep-size", type=int, default=16, help="calibration examples for the 70B shape")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    load_before = os.getloadavg()
    runs = {f"{selector}/{mode}": _child("smollm2", selector, mode, args.size) for selector, mode in SMOLLM2}
    smollm2 = {}
    for selector in ("cka", "activation"):
        whole, streamed = runs[f"{selector}/whole"], runs[f"{selector}/streamed"]
        smollm2[selector] = {
            "whole": {k: whole[k] for k in ("seconds", "peak_bytes", "weights_bytes")},
            "streamed": {k: streamed[k] for k in ("seconds", "peak_bytes", "largest_part_bytes")},
            "seconds_ratio": streamed["seconds"] / whole["seconds"],
            "peak_ratio": streamed["peak_bytes"] / whole["peak_bytes"],
            "max_score_difference": max(abs(a - b) for a, b in zip(whole["scores"], streamed["scores"])),
        }
    deep = _child("llama-3.1-70b/4", "cka", "streamed", args.deep_size)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    OUT.write_text(json.dumps({
        "commit": commit.stdout.strip(), "machine": f"{os.cpu_count()} CPUs, fp32",
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "note": ("shared machine: other engineers' jobs ran alongside (see load_average), so the seconds are "
                 "indicative; the peak memory is each fresh process's growth of ru_maxrss"),
        "smollm2_135m": {"calibration_examples": args.size, **smollm2},
        "llama_3_1_70b_quarter_width": {k: deep[k] for k in ("seconds", "peak_bytes", "weights_bytes",
                                                             "largest_part_bytes", "blocks", "calibration_examples")},
    }, indent=2) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
