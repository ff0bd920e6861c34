"""``raylsl train``: load, validate, evaluate the base model, put LoRA on the chosen blocks, train,
evaluate again, save a standard peft adapter.

Everything the user can get wrong is checked in `prepare` before the run directory exists, so bad
input never leaves a half-written run behind. The run directory holds:
    config.yaml      the resolved config          run.json      status, blocks, counts
    metrics.jsonl    one line per step            checkpoints/  resumable state
    adapter/         the final peft adapter       results.json  written last, only on success
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from raylsl.config import RunConfig, load_config
from raylsl.data import TaskSplits, load_task
from raylsl.errors import ConfigError
from raylsl.lora import adapted_blocks, apply_lora, count_trainable, parse_layers
from raylsl.models import ModelSpec, find_blocks, resolve_model
from raylsl.objective import Objective, evaluate, make_objective
from raylsl.selectors import Budget, Selection, TrainingContext, build_selector, select_blocks
from raylsl.selectors.report import plot_scores, plot_trajectory
from raylsl.training.loop import Callback, autocast_for, seed_everything, train_loop


@dataclass
class Prepared:
    """A validated run: model, data and block choice, nothing written yet."""

    config: RunConfig
    spec: ModelSpec
    model: nn.Module
    tokenizer: Any
    blocks_path: str
    num_blocks: int
    layers: list[int]
    task: TaskSplits
    objective: Objective
    selection: Selection | None
    """How a selector chose ``layers``; None when the config lists them."""


def prepare(config: RunConfig, layers: list[int] | None = None, device: torch.device | None = None) -> Prepared:
    """Resolves and validates everything a run needs, running the selector if one is configured;
    raises `RaylslError` on bad input.

    Args:
        layers: blocks already chosen (by the driver of a Ray run); skips selection.
        device: where the model goes (default: the GPU if there is one).
    """
    spec = resolve_model(config.model)
    task = load_task(config.task, config.data)
    model, tokenizer = spec.load()
    blocks_path, blocks = find_blocks(model, config.blocks_path)
    if layers is None and config.selector is None:
        layers = parse_layers(config.layers, len(blocks))
    model.to(device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    objective = make_objective(spec.kind, tokenizer, config.data.max_length)
    selection = None
    if layers is None:
        selection = select_blocks(
            model, blocks, objective, task.train,
            build_selector(config.selector, config.selector_options.get(config.selector)),
            Budget(config.n, config.threshold, config.mass), config.calibration,
            config.lora.target_modules, config.data.max_length, validation=task.validation,
            blocks_path=blocks_path, lora=config.lora, train_settings=config.train)
        layers = selection.layers
    return Prepared(config, spec, model, tokenizer, blocks_path, len(blocks), layers, task, objective, selection)




def train(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Runs a fresh training run; returns the results also written to ``results.json``."""
    prepared = prepare(config)
    return _run(prepared, create_run_dir(config), progress)


def resume(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continues the run in ``run_dir`` from its newest checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a raylsl run directory (no config.yaml); pass the folder "
                          f"that `raylsl train` printed")
    return _run(prepare(load_config(run_dir / "config.yaml")), run_dir, progress)


def _run(prepared: Prepared, run_dir: Path, progress: bool) -> dict[str, Any]:
    config = prepared.config
    started = time.perf_counter()
    write_json(run_dir / "run.json", {"status": "running", "layers": prepared.layers})
    if prepared.selection is not None:
        write_selection(prepared.selection, run_dir)
    try:
        before = _evaluate_before(prepared, run_dir)
        if config.workers:
            from peft import PeftModel

            from raylsl.distributed.ray_train import train_with_ray

            loop = train_with_ray(prepared, run_dir, progress)
            dynamic_summary = loop.pop("dynamic")
            model = PeftModel.from_pretrained(prepared.model, run_dir / "adapter", is_trainable=True)
        else:
            model, dynamic = adapt(prepared)
            loop = train_loop(model, prepared.objective, prepared.task.train, config.train, run_dir,
                              callbacks=(dynamic,) if dynamic else (), progress=progress)
            dynamic_summary = dynamic.summary() if dynamic else None
            model.save_pretrained(run_dir / "adapter")
        params = count_trainable(model)
        after = evaluate_on(prepared, model, getattr(prepared.task, config.eval_split))
    except BaseException as exc:
        write_json(run_dir / "run.json", {"status": "failed", "error": repr(exc), "layers": prepared.layers})
        raise
    results = {
        "model": config.model, "task": config.task.name, "layers": prepared.layers,
        "adapted_blocks": adapted_blocks(model, prepared.blocks_path), "num_blocks": prepared.num_blocks,
        "lora_r": config.lora.r, "params": params, "before": before, "after": after,
        "eval_split": config.eval_split, "train": loop,
        "selector": config.selector, "selection_time_s": prepared.selection.seconds if prepared.selection else 0.0,
        "dynamic": dynamic_summary, "workers": config.workers, "deepspeed": config.deepspeed,
        "wall_time_s": time.perf_counter() - started, "run_dir": str(run_dir),
    }
    write_json(run_dir / "results.json", results)
    write_json(run_dir / "run.json", {"status": "complete", "layers": prepared.layers})
    return results


def adapt(prepared: Prepared) -> tuple[nn.Module, Callback | None]:
    """LoRA on the chosen blocks (seeded, so every rank starts identical), and the training-loop
    callback of a dynamic selector (IST, LISA), None for static ones."""
    config = prepared.config
    seed_everything(config.train.seed)
    model = apply_lora(prepared.model, prepared.layers, config.lora, prepared.blocks_path,
                       find_blocks(prepared.model, prepared.blocks_path)[1], prepared.spec.kind)
    if config.selector is None:
        return model, None
    selector = build_selector(config.selector, config.selector_options.get(config.selector))
    ctx = TrainingContext(model, prepared.blocks_path, prepared.num_blocks, prepared.objective,
                          prepared.task.validation, config.train.seed)
    return model, selector.training_callback(ctx)


def evaluate_on(prepared: Prepared, model: nn.Module, examples: list) -> dict[str, float]:
    """Accuracy of ``model`` on ``examples`` with the run's objective, batch size and precision."""
    autocast = autocast_for(prepared.config.train, next(model.parameters()).device)
    return evaluate(model, prepared.objective, examples, prepared.config.train.eval_batch_size, autocast)


def _evaluate_before(prepared: Prepared, run_dir: Path) -> dict[str, float] | None:
    """Base-model test accuracy, computed once per run directory (a resume reuses it)."""
    path = run_dir / "eval_before.json"
    if path.exists():
        return json.loads(path.read_text())
    if not prepared.config.eval_before:
        return None
    before = evaluate_on(prepared, prepared.model, prepared.task.test)
    write_json(path, before)
    return before


def write_selection(selection: Selection, run_dir: Path) -> None:
    """Records which blocks were chosen and why: ``scores.json``, the ``scores.png`` bar plot and,
    for selectors that learn their scores (Flexora), ``<method>_trajectory.png``."""
    write_json(run_dir / "scores.json", selection.to_dict())
    plot_scores(selection, run_dir / "scores.png")
    trajectory = selection.scores.details.get("trajectory")
    if trajectory:
        method = selection.scores.method
        plot_trajectory(trajectory, run_dir / f"{method}_trajectory.png", f"{method} scores", "score")


def create_run_dir(config: RunConfig, prefix: str = "") -> Path:
    """A fresh run directory holding the resolved ``config.yaml``; refuses to reuse a non-empty one."""
    name = config.name or "{}{}-{}-{}".format(
        prefix, Path(config.model).name, Path(config.task.name).stem, datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    run_dir = Path(config.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run directory {run_dir} already exists; choose another name=, or continue "
                          f"it with `raylsl train --resume {run_dir}`")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return run_dir


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as JSON through a temporary file, so readers never see half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def format_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    spans: list[list[int]] = []
    for i in layers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def summary(results: dict[str, Any]) -> str:
    """Human-readable summary of a finished run."""
    p, before, after = results["params"], results["before"], results["after"]
    chosen_by = f"chosen by {results['selector']} in {results['selection_time_s']:.1f} s" if results["selector"] else "as configured"
    lines = [
        f"model {results['model']}  task {results['task']}  blocks {format_layers(results['layers'])} "
        f"({len(results['layers'])}/{results['num_blocks']}, {chosen_by})",
        f"trainable parameters: {p['trainable']:,} (adapters {p['adapter']:,}, head {p['head']:,}) "
        f"= {100 * p['trainable'] / p['total']:.3f}% of {p['total']:,}",
    ]
    for metric in after:
        if metric == "n":
            continue
        was = f"{before[metric]:.4f} -> " if before else ""
        lines.append(f"{results.get('eval_split', 'test')} {metric}: {was}{after[metric]:.4f}  (n={after['n']})")
    t = results["train"]
    lines.append(f"time: train {t['train_time_s']:.1f} s ({t['steps']} steps, "
                 f"{t['train_time_s'] / max(t['steps'] - t['resumed_from'], 1):.2f} s/step), "
                 f"total {results['wall_time_s']:.1f} s; peak memory {t['peak_memory_mb']:.0f} MB")
    lines.append(f"run directory: {results['run_dir']}")
    return "\n".join(lines)
