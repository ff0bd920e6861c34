"""The big-model levers on a CPU with SmolLM2-135M: loading at the training dtype, selection-aware
activation checkpointing, and the memory estimate against what a step measures.

    python benchmarks/memory_levers.py [--parts load,checkpointing,estimate] [--steps 10] [--warmup 3]

Each part runs in its own subprocess (each load in its own, so RSS peaks do not mix); ratios are
taken within one run.

load           host peak RSS of loading the model, at bf16 (``model.dtype=bfloat16``: passed to
               ``from_pretrained``) against the old way (fp32, then ``.to(bfloat16)``), from a bf16
               checkpoint (how hub checkpoints are stored) and from raylsl's fp32 cache. Peak RSS
               (``VmHWM``) and peak anonymous RSS (sampled ``RssAnon``: file pages of the memory-mapped
               checkpoint are page cache, not a copy) above the process's RSS after imports.
checkpointing  step time (median of the timed steps; the six rows' steps interleaved in one process,
               so load on the machine falls on all alike) and the step's peak live tensor bytes
               (`raylsl.models.memory.LiveBytes`, torch's own accounting, one extra step) for LoRA on
               the upper 15 and all 30 blocks, with checkpointing off, selection-aware
               (``train.activation_checkpointing=on``) and full (transformers'
               ``gradient_checkpointing_enable`` + ``enable_input_require_grads``, the usual recipe:
               every block checkpointed and run backward). fp32, micro-batch 8 x 128 tokens of text,
               every token a target.
estimate       `raylsl.fit.estimate` (activations and LM head, traced on the meta device) against
               the live bytes of the same step on the CPU (the real objective and data), and the
               total against the process's peak RSS increase over the loaded model, per row.

Writes ``benchmarks/memory_levers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
MODEL = "smollm2-135m"
SHAPES = {"upper-15": "15-29", "all-30": "all"}
CHECKPOINTING = ("off", "selective", "full")


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class _Sampler:
    """The peak of anonymous RSS, sampled every 2 ms while the body runs."""

    def __enter__(self):
        self.peak, self._done = _status("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


# --- load ------------------------------------------------------------------------------------------

def _bf16_checkpoint() -> str:
    """SmolLM2 saved in bf16, as hub checkpoints are (built once, beside raylsl's fp32 cache)."""
    import torch

    from raylsl.fetch import cached_directory
    from raylsl.models import resolve_model, save_to_cache

    def build(target: Path) -> None:
        model, tokenizer = resolve_model(MODEL).load()
        save_to_cache(model.to(torch.bfloat16), tokenizer, target)

    return str(cached_directory("models/smollm2-135m-bf16", build, ready="model.safetensors"))


def measure_load(source: str, how: str) -> dict:
    import torch

    from raylsl.config import ModelSettings
    from raylsl.models import resolve_model
    from raylsl.models.loading import load_options

    spec = resolve_model(source)
    spec.config()  # imports and config reads are not the load
    base_rss, base_anon = _status("VmRSS"), _status("RssAnon")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    with _Sampler() as anon:
        if how == "bf16":
            model, _ = spec.load(load_options(ModelSettings(dtype="bfloat16"), torch.device("cpu")))
        else:
            model, _ = spec.load()
            model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    return {"source": source, "how": how, "seconds": time.perf_counter() - started, "params": params,
            "peak_rss_mb": (_status("VmHWM") - base_rss) / 2**20, "peak_anon_mb": (anon.peak - base_anon) / 2**20,
            "bytes_per_param_rss": (_status("VmHWM") - base_rss) / params,
            "bytes_per_param_anon": (anon.peak - base_anon) / params,
            "dtype": str(next(model.parameters()).dtype)}


# --- checkpointing and estimate --------------------------------------------------------------------

def _text_rows(path: Path, n: int) -> str:
    """Text rows long enough to fill 128 tokens after truncation: every position a target."""
    words = "the of and a to in is you that it he was for on are as with his they at be this have from".split()
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(200))}) + "\n")
    return str(path)


def _config(layers: str, checkpointing: str, task: str, batch: int, loss_chunk: int = 0):
    from raylsl.plan import load_run_config

    return load_run_config(None, {"model": MODEL, "task.name": task, "layers": layers, "data.max_length": 128,
                                  "data.test_size": 8, "data.val_size": 8, "train.batch_size": batch,
                                  "train.checkpoint_every": 0, "train.warmup_steps": 1, "train.loss_chunk": loss_chunk,
                                  "train.activation_checkpointing": "on" if checkpointing == "selective" else "off",
                                  "eval_before": False, "fit_check": False})


def _prepared(layers: str, checkpointing: str, task: str, batch: int, loss_chunk: int = 0):
    from raylsl.assemble import assemble_here

    a = assemble_here(_config(layers, checkpointing, task, batch, loss_chunk))
    if checkpointing == "full":  # the usual recipe, as peers run it
        a.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        a.model.enable_input_require_grads()
    return a


def _step(a, examples):
    from raylsl.objective import to_device

    batch = to_device(a.objective.batch(examples), a.device)
    loss = a.objective.loss(a.model, batch)
    loss.backward()
    a.model.zero_grad(set_to_none=True)
    return float(loss)


def measure_steps(task: str, batch: int, steps: int, warmup: int) -> list[dict]:
    """Every (blocks, checkpointing) row in one process, their steps interleaved round-robin, so
    that a load that comes and goes on the machine falls on every row alike."""
    import torch

    from raylsl.models.memory import LiveBytes

    rows = []
    for name, layers in SHAPES.items():
        for how in CHECKPOINTING:
            torch.manual_seed(0)
            a = _prepared(layers, how, task, batch)
            a.model.train()
            _step(a, a.plan.task.train[:batch])  # the first loss checks the layouts: not timed
            rows.append({"blocks": name, "layers": layers, "checkpointing": how, "a": a, "times": []})
    for step in range(steps):
        for row in rows:
            examples = row["a"].plan.task.train
            chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
            started = time.perf_counter()
            _step(row["a"], chunk)
            row["times"].append(time.perf_counter() - started)
    for row in rows:
        with LiveBytes() as live:
            _step(row["a"], row["a"].plan.task.train[:batch])
        times = row.pop("times")[warmup:]
        del row["a"]
        row.update(step_s=statistics.median(times), step_s_min=min(times), step_s_max=max(times),
                   timed_steps=len(times), peak_step_mb=live.peak / 2**20)
    return rows


def measure_estimate(layers: str, checkpointing: str, task: str, batch: int, loss_chunk: int) -> dict:
    import torch

    from raylsl.fit import Device, available_host_memory, estimate
    from raylsl.models.memory import LiveBytes

    config = _config(layers, checkpointing, task, batch, loss_chunk)
    found = estimate(config, Device("cpu", available_host_memory()), table=False)
    torch.manual_seed(0)
    a = _prepared(layers, checkpointing, task, batch, loss_chunk)
    a.model.train()
    examples = a.plan.task.train[:batch]
    _step(a, examples)  # the first loss checks the layouts: not a training step's memory
    optimizer = torch.optim.AdamW([p for p in a.model.parameters() if p.requires_grad])
    base_rss = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    with LiveBytes() as live:
        from raylsl.objective import to_device

        loss = a.objective.loss(a.model, to_device(a.objective.batch(examples), a.device))
        loss.backward()
    optimizer.step()  # the moments exist from here on, as in every later step
    rss = _status("VmHWM") - base_rss
    terms = found.configured.terms
    traced = terms["activations"] + terms["lm_head"]
    return {"layers": layers, "checkpointing": checkpointing, "loss_chunk": loss_chunk,
            "estimated_step_mb": traced / 2**20, "measured_step_mb": live.peak / 2**20,
            "step_error": traced / live.peak - 1, "estimated_total_mb": found.configured.total / 2**20,
            "estimate_terms_mb": {k: v / 2**20 for k, v in terms.items()}, "rss_increase_mb": rss / 2**20,
            "note": "rss_increase is the step's RSS growth over the loaded model (glibc keeps freed memory, "
                    "so it can exceed the live peak)"}


def _child(args) -> None:
    kind, *rest = args.child.split("|")
    if kind == "load":
        row = measure_load(*rest)
    elif kind == "steps":
        row = measure_steps(rest[0], args.batch, args.steps, args.warmup)
    else:
        row = measure_estimate(rest[0], rest[1], rest[2], args.batch, int(rest[3]))
    print(json.dumps(row))


def _run(child: str, args) -> dict | list:
    cmd = [sys.executable, __file__, "--child", child, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if out.returncode != 0:
        raise SystemExit(f"{child} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {child.split('|')[0]}: {json.dumps(row)[:200]}", file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="load,checkpointing,estimate")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    parts = args.parts.split(",")
    result = {"model": MODEL, "device": "cpu", "cores": os.cpu_count(), "batch": args.batch, "sequence": 128,
              "steps": args.steps, "warmup": args.warmup}
    if OUT.is_file():
        result = {**json.loads(OUT.read_text()), **result}
    if "load" in parts:
        from raylsl.models import resolve_model

        sources = {"bf16 checkpoint": _bf16_checkpoint(), "fp32 cache": resolve_model(MODEL).directory()}
        result["load"] = [_run(f"load|{path}|{how}", args) | {"checkpoint": name}
                          for name, path in sources.items() for how in ("bf16", "fp32-then-cast")]
    with tempfile.TemporaryDirectory() as tmp:
        task = _text_rows(Path(tmp) / "text.jsonl", 200)
        if "checkpointing" in parts:
            result["checkpointing"] = _run(f"steps|{task}", args)
        if "estimate" in parts:
            result["estimate"] = [_run(f"estimate|{layers}|{how}|{task}|{chunk}", args) | {"blocks": name}
                                  for name, layers in SHAPES.items() for how in ("off", "selective")
                                  for chunk in (0, 256)]
    OUT.write_text(json.dumps(result, indent=2))
    _print(result)
    print(f"\nwritten {OUT}")


def _print(result: dict) -> None:
    if "load" in result:
        print(f"\nloading {MODEL} (host memory above the process after imports)")
        print(f"{'checkpoint':<16} {'load':<15} {'peak RSS MB':>11} {'B/param':>8} {'peak anon MB':>12} {'B/param':>8}")
        for row in result["load"]:
            print(f"{row['checkpoint']:<16} {row['how']:<15} {row['peak_rss_mb']:>11.0f} {row['bytes_per_param_rss']:>8.2f} "
                  f"{row['peak_anon_mb']:>12.0f} {row['bytes_per_param_anon']:>8.2f}")
    if "checkpointing" in result:
        rows = result["checkpointing"]
        ref = next(r for r in rows if r["blocks"] == "all-30" and r["checkpointing"] == "full")
        print(f"\nactivation checkpointing, fp32, micro-batch {result['batch']} x 128 (ratios to all 30 blocks with "
              f"full checkpointing; median of {rows[0]['timed_steps']} steps)")
        print(f"{'blocks':<9} {'checkpointing':<13} {'s/step':>7} {'x':>6} {'step peak MB':>13} {'x':>6}")
        for row in rows:
            print(f"{row['blocks']:<9} {row['checkpointing']:<13} {row['step_s']:>7.2f} {row['step_s'] / ref['step_s']:>6.2f} "
                  f"{row['peak_step_mb']:>13.0f} {row['peak_step_mb'] / ref['peak_step_mb']:>6.2f}")
    if "estimate" in result:
        print("\nthe estimate against the step (activations + LM head, MB)")
        print(f"{'blocks':<9} {'checkpointing':<13} {'chunk':>6} {'estimated':>10} {'measured':>9} {'error':>7} "
              f"{'est. total':>10} {'RSS +':>7}")
        for row in result["estimate"]:
            print(f"{row['blocks']:<9} {row['checkpointing']:<13} {row['loss_chunk']:>6} {row['estimated_step_mb']:>10.0f} "
                  f"{row['measured_step_mb']:>9.0f} {row['step_error']:>+7.1%} {row['estimated_total_mb']:>10.0f} "
                  f"{row['rss_increase_mb']:>7.0f}")


if __name__ == "__main__":
    main()
