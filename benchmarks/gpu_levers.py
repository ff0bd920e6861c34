"""The big-model levers on one GPU: Llama-3.2-1B, 3B and 3.1-8B at sequence 2048, random weights
built from the shipped configs (nothing downloaded), with their estimates beside them.

    python benchmarks/gpu_levers.py [--models llama-3.2-1b,llama-3.2-3b,llama-3.1-8b] [--batch 2]
    python benchmarks/gpu_levers.py --smoke          # tiny-llama on the CPU: checks the script, measures nothing

Per model (bf16; 4-bit for the 8B), one process builds the base once and, for each row, puts LoRA
on a block set (all, the upper half, the upper 25%), sets checkpointing (off; full: transformers'
``gradient_checkpointing_enable`` + ``enable_input_require_grads``, the usual recipe; selective:
raylsl's, from the lowest adapted block), runs ``--warmup`` + ``--steps`` steps of packed text
(every position a target, the LM head in chunks of 1024), and records
``torch.cuda.max_memory_allocated`` over the steps, tokens/s (median step) and the estimate
(`raylsl.fit.estimate`, traced on the meta device) for the same configuration, with its error.
Then the peer row: HF ``Trainer`` + peft, all blocks, ``gradient_checkpointing=True``, bf16, same
model, batch and sequence, measured in the same run as raylsl's all-blocks rows.

The largest model that fits one GPU of this card's memory at sequence 2048, per option, comes from
the estimate over the shipped configs (estimate only; said so in the JSON). Sized to run in under
8 minutes on an H100. Writes ``benchmarks/gpu_levers.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

OUT = Path(__file__).with_suffix(".json")
SHIPPED = ["llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "qwen2.5-7b", "mistral-7b", "llama-3.1-70b"]
ROWS = [("all", "off"), ("all", "full"), ("all", "selective"), ("upper-half", "selective"), ("upper-25%", "selective"),
        ("upper-25%", "off")]
QUANTIZED_ROWS = [("all", "full"), ("upper-25%", "selective"), ("upper-25%", "off")]
CHUNK = 1024


def block_set(name: str, num_blocks: int) -> list[int]:
    share = {"all": 1.0, "upper-half": 0.5, "upper-25%": 0.25}[name]
    return list(range(num_blocks - max(1, round(num_blocks * share)), num_blocks))


def _config(model: str, layers: list[int], checkpointing: str, quantization: str, batch: int, sequence: int):
    from raylsl.plan import load_run_config

    return load_run_config(None, {"model": model, "model.weights": "random", "model.dtype": "bfloat16",
                                  "model.quantization": quantization, "task.format": "text",
                                  "layers": ",".join(map(str, layers)), "data.max_length": sequence,
                                  "train.batch_size": batch, "train.loss_chunk": CHUNK,
                                  "train.activation_checkpointing": "on" if checkpointing == "selective" else "off"})


def _batch(vocab: int, batch: int, sequence: int, device):
    import torch

    ids = torch.randint(3, vocab, (batch, sequence), device=device)
    positions = torch.arange(sequence, device=device).expand(batch, sequence)
    targets = torch.ones_like(ids, dtype=torch.bool)
    targets[:, 0] = False
    return {"packed_ids": ids, "packed_positions": positions, "packed_targets": targets}


def measure_model(name: str, quantization: str, args, device) -> list[dict]:
    """Every row of one model and quantization, on one base built once."""
    import torch

    from raylsl.config import ModelSettings
    from raylsl.fit import Device, estimate
    from raylsl.lora import apply_lora
    from raylsl.models import find_blocks, resolve_model
    from raylsl.models.checkpointing import checkpoint_blocks, uncheckpoint_blocks
    from raylsl.models.loading import load_options
    from raylsl.objective.causal import target_nll

    spec = resolve_model(name)
    started = time.perf_counter()
    dtype = "bfloat16" if device.type == "cuda" or quantization != "none" else "float32"
    base, _ = spec.load(load_options(ModelSettings(weights="random", dtype=dtype, quantization=quantization), device))
    built = time.perf_counter() - started
    path, blocks = find_blocks(base)
    vocab = base.get_output_embeddings().out_features
    capacity = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 64 * 2**30
    rows = []
    for blocks_name, checkpointing in (QUANTIZED_ROWS if quantization != "none" else ROWS):
        layers = block_set(blocks_name, len(blocks))
        config = _config(name, layers, checkpointing, quantization, args.batch, args.sequence)
        found = estimate(config, Device(device.type, capacity), layers=layers, table=False)
        from raylsl.config import LoraSettings

        torch.manual_seed(0)
        model = apply_lora(base, layers, LoraSettings(r=8), path, blocks, "decoder")
        if checkpointing == "selective":
            checkpoint_blocks(blocks, min(layers))
        elif checkpointing == "full":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        batch = _batch(vocab, args.batch, args.sequence, device)
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = target_nll(model, batch, "packed", CHUNK) / (args.batch * (args.sequence - 1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        step = statistics.median(times[args.warmup:])
        rows.append({"model": name, "quantization": quantization, "blocks": blocks_name, "layers": layers,
                     "checkpointing": checkpointing, "step_s": step, "tokens_per_s": args.batch * args.sequence / step,
                     "peak_allocated_bytes": peak, "estimated_bytes": found.configured.total,
                     "estimate_error": (found.configured.total / peak - 1) if peak else None,
                     "estimate_for": "off or selective (full checkpointing is the peers' recipe)"
                     if checkpointing != "full" else "none", "base_build_s": built})
        print(json.dumps(rows[-1]), flush=True)
        del optimizer, loss
        uncheckpoint_blocks(blocks)
        if checkpointing == "full":
            model.gradient_checkpointing_disable()
            model.disable_input_require_grads()
        base = model.unload()  # the base without adapters, for the next row
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if quantization == "none" and name == args.trainer:
        rows.append(_trainer_row(base, name, args, device))
    del base
    gc.collect()
    return rows


def _trainer_row(base, name: str, args, device) -> dict:
    """HF Trainer + peft, all blocks, gradient_checkpointing=True: the peers' default recipe."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from raylsl.lora import default_target_modules
    from raylsl.models import find_blocks

    blocks = find_blocks(base)[1]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                            target_modules=default_target_modules(blocks)))
    vocab = base.get_output_embeddings().out_features
    examples = [{"input_ids": ids, "labels": ids} for ids in
                torch.randint(3, vocab, (args.batch * (args.warmup + args.steps), args.sequence)).tolist()]
    times: list[float] = []

    cuda = device.type == "cuda"

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize() if cuda else None
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize() if cuda else None
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(tmp, per_device_train_batch_size=args.batch, max_steps=args.warmup + args.steps,
                                     bf16=cuda, use_cpu=not cuda, gradient_checkpointing=True, learning_rate=1e-4,
                                     logging_steps=10**6, save_strategy="no", report_to=[],
                                     remove_unused_columns=False, dataloader_num_workers=0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        Trainer(model=model, args=training, train_dataset=examples, callbacks=[Timer()]).train()
    step = statistics.median(times[args.warmup:])
    row = {"model": name, "quantization": "none", "blocks": "all", "checkpointing": "hf-trainer",
           "step_s": step, "tokens_per_s": args.batch * args.sequence / step,
           "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else 0}
    print(json.dumps(row), flush=True)
    model.unload()
    return row


def largest_that_fits(capacity: int, sequence: int, batch: int) -> dict:
    """Per option, the largest shipped model whose estimate fits one GPU of ``capacity`` (estimate only)."""
    from raylsl.fit import Device, estimate
    from raylsl.plan import load_run_config

    fits: dict[str, list] = {}
    for name in SHIPPED:
        config = load_run_config(None, {"model": name, "task.format": "text", "data.max_length": sequence,
                                        "train.batch_size": batch, "train.loss_chunk": CHUNK})
        found = estimate(config, Device("cuda", capacity))
        for option in found.options:
            if option.zero in (None, 0) and option.total <= found.device.usable:
                key = f"{option.quantization}, {'selective checkpointing' if option.checkpointing else 'no checkpointing'}"
                fits.setdefault(key, []).append((found.total_params, name))
    return {key: max(models)[1] for key, models in fits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="llama-3.2-1b,llama-3.2-3b,llama-3.1-8b")
    parser.add_argument("--quantized", default="llama-3.1-8b", help="models also measured in 4-bit")
    parser.add_argument("--trainer", default="llama-3.1-8b", help="model of the HF Trainer + peft peer row")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sequence", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny-llama on the CPU: checks the script only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    if args.smoke:
        args.models, args.quantized, args.trainer, args.sequence, args.steps, args.warmup = \
            "tiny-llama", "tiny-llama", "tiny-llama", 64, 1, 1
    elif not torch.cuda.is_available():
        sys.exit("gpu_levers: no CUDA device here (run with --smoke to check the script on a CPU)")
    device = torch.device("cuda", 0) if torch.cuda.is_available() and not args.smoke else torch.device("cpu")
    started = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        rows += measure_model(name, "none", args, device)
        if name in args.quantized.split(","):
            rows += measure_model(name, "4bit", args, device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke: nothing measured)"
    capacity = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 80 * 10**9
    result = {"card": card, "torch": torch.__version__, "weights": "random, from the shipped configs",
              "batch": args.batch, "sequence": args.sequence, "steps": args.steps, "warmup": args.warmup,
              "loss_chunk": CHUNK, "rows": rows, "wall_s": time.perf_counter() - started,
              "largest_that_fits_one_gpu": {"by": "estimate only", "capacity_bytes": capacity,
                                            "models": {} if args.smoke else
                                            largest_that_fits(capacity, args.sequence, args.batch)}}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{card}: batch {args.batch} x {args.sequence}, median of {args.steps} steps after {args.warmup}")
    print(f"{'model':<14} {'quant':<5} {'blocks':<10} {'checkpointing':<13} {'tokens/s':>9} {'peak GB':>8} "
          f"{'est. GB':>8} {'error':>7}")
    for r in rows:
        est = r.get("estimated_bytes")
        err = f"{r['estimate_error']:+.1%}" if r.get("estimate_error") is not None else ""
        print(f"{r['model']:<14} {r['quantization']:<5} {r['blocks']:<10} {r['checkpointing']:<13} "
              f"{r['tokens_per_s']:>9.0f} {r['peak_allocated_bytes'] / 1e9:>8.2f} "
              f"{(est or 0) / 1e9:>8.2f} {err:>7}")
    print(f"\nlargest shipped model that fits one GPU (estimate): {result['largest_that_fits_one_gpu']['models']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
