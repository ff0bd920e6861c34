"""One training session: evaluate before, train, save the adapter, evaluate after.

The single-process run and every Ray Train worker call `run_session` with their own engine and
checkpoint store; under data parallelism every rank calls it and evaluation is sharded across
ranks (`raylsl.objective.evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raylsl.assemble import Assembled
from raylsl.lora import adapted_blocks, count_trainable
from raylsl.objective import evaluate
from raylsl.training.loop import autocast_for, train_loop


def evaluate_assembled(a: Assembled, examples: list, desc: str, progress: bool = False, rank: int = 0,
                       world: int = 1, per_example: bool = False) -> dict[str, Any]:
    """The run's metrics of ``a.model`` on ``examples``, with its batch size and precision."""
    settings = a.plan.config.train
    return evaluate(a.model, a.objective, examples, settings.eval_batch_size, autocast_for(settings, a.device),
                    progress=progress, desc=desc, rank=rank, world=world, per_example=per_example)


def run_session(a: Assembled, out_dir: Path, engine, checkpoints, rank: int = 0, world: int = 1,
                progress: bool = True) -> dict[str, Any]:
    """Runs one session and returns what it measured (rank 0's view).

    ``out_dir`` receives the records (``metrics.jsonl``, a dynamic selector's record) and the final
    ``adapter/``. The evaluation before training is of the assembled model before its first step
    (LoRA's B starts at 0, so that is the base model); a resumed run reads it from its checkpoint.

    Returns:
        ``{"before", "after", "after_per_example", "train", "params", "adapted_blocks", "dynamic",
        "workers", "device"}``; with ``tracking``, rank 0 also writes TensorBoard events.
    """
    config, task = a.plan.config, a.plan.task
    before = (checkpoints.peek() or {}).get("before")
    if before is None and config.eval_before:
        before = evaluate_assembled(a, task.test, "eval before", progress, rank, world)
    tracker = _tracker(a, out_dir) if config.tracking != "none" and rank == 0 else None
    if tracker:
        tracker.log_metrics("eval_before", before, 0)
    callbacks = tuple(cb for cb in (a.dynamic, tracker) if cb is not None)  # dynamic first: its checkpointed state
    loop = train_loop(a.model, a.objective, task.train, config.train, out_dir, callbacks=callbacks, progress=progress,
                      engine=engine, checkpoints=checkpoints, rank=rank, world=world, extra={"before": before})
    engine.save_adapter(out_dir / "adapter", rank)
    after = evaluate_assembled(a, getattr(task, config.eval_split), "eval after", progress, rank, world,
                               per_example=True)
    per_example = after.pop("per_example")
    if tracker:
        tracker.log_metrics(f"eval_after_{config.eval_split}", after, loop["steps"])
        tracker.log_metrics("final", {"final_loss": loop["final_loss"], "train_time_s": loop["train_time_s"],
                                      "peak_memory_mb": loop["peak_memory_mb"]}, loop["steps"])
        tracker.close()
    return {"before": before, "after": after, "after_per_example": per_example, "train": loop, "params": count_trainable(a.model),
            "adapted_blocks": adapted_blocks(a.model, a.plan.blocks_path),
            "dynamic": a.dynamic.summary() if a.dynamic else None, "workers": world,
            "device": torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else a.device.type}


def _tracker(a: Assembled, out_dir: Path):
    import yaml

    from raylsl.tracking import TENSORBOARD_DIR, TensorBoardTracker

    config = a.plan.config
    log_dir = Path(config.tracking_uri) if config.tracking_uri else out_dir / TENSORBOARD_DIR
    blocks = f"{len(a.plan.layers)} of {a.plan.num_blocks}: {', '.join(map(str, a.plan.layers))}"
    return TensorBoardTracker(log_dir, blocks, yaml.safe_dump(config.to_dict(), sort_keys=False))
