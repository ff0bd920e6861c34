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
from raylsl.callbacks import Callback, LoopState
from raylsl.fit import estimated_memory
from raylsl.lora import adapted_blocks, count_trainable
from raylsl.objective import evaluate
from raylsl.training.loop import autocast_for, train_loop


def evaluate_assembled(a: Assembled, examples: list, desc: str, progress: bool = False, rank: int = 0,
                       world: int = 1, per_example: bool = False) -> dict[str, Any]:
    """The run's metrics of ``a.model`` on ``examples``, with its batch size and precision."""
    settings = a.plan.config.train
    return evaluate(a.model, a.objective, examples, settings.eval_batch_size, autocast_for(settings, a.device),
                    progress=progress, desc=desc, rank=rank, world=world, per_example=per_example)


class PeriodicEval(Callback):
    """Evaluates on the first ``train.eval_subset`` validation examples every ``train.eval_every``
    steps and at ``extra_steps`` (a sweep's rungs), except after the last step (the evaluation
    after training covers it). The values join the step's metrics line as ``val_*`` and go to
    ``checkpoints.report`` with the step, the fraction of the run done and the trainable
    parameters, as ``final: False`` (what a sweep's scheduler and Tune's results read). Every rank
    evaluates its shard."""

    def __init__(self, a: Assembled, checkpoints, extra_steps=(), rank: int = 0, world: int = 1,
                 estimated: int | None = None):
        settings = a.plan.config.train
        examples = a.plan.task.validation
        self.a, self.checkpoints, self.rank, self.world = a, checkpoints, rank, world
        self.examples = examples[:settings.eval_subset] if settings.eval_subset else examples
        every = settings.eval_every
        self.steps = {s for s in range(every, settings.steps, every)} if every else set()
        self.steps |= {s for s in extra_steps if 0 < s < settings.steps}
        self.trainable = count_trainable(a.model)["trainable"]
        self.estimated = estimated

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        if state.step not in self.steps or not self.examples:
            return
        values = evaluate_assembled(self.a, self.examples, "eval", rank=self.rank, world=self.world)
        values = {f"val_{k}": v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update(values)
        # the costs of the steps so far: what a scheduler ranks trials by at a rung
        costs = cost_metrics(state.costs.summary(self.world), self.estimated) if state.costs else {}
        self.checkpoints.report({**values, **costs, "step": state.step, "fraction": state.step / state.settings.steps,
                                 "trainable_params": self.trainable, "num_blocks": self.a.plan.num_blocks,
                                 "final": False})


def run_session(a: Assembled, out_dir: Path, engine, checkpoints, rank: int = 0, world: int = 1,
                progress: bool = True, eval_steps=()) -> dict[str, Any]:
    """Runs one session and returns what it measured (rank 0's view).

    ``eval_steps``: steps at which to evaluate during training besides every ``train.eval_every``
    (`PeriodicEval`). ``out_dir`` receives the records (``metrics.jsonl``, a dynamic selector's record) and the final
    ``adapter/``. The evaluation before training is of the assembled model before its first step
    (LoRA's B starts at 0, so that is the base model); a resumed run reads it from its checkpoint.

    Returns:
        ``{"before", "after", "after_per_example", "train", "params", "adapted_blocks", "dynamic",
        "workers", "checkpointed_blocks", "device"}``; with ``tracking``, rank 0 also logs to TensorBoard or MLflow.
    """
    config, task = a.plan.config, a.plan.task
    before = (checkpoints.peek() or {}).get("before")
    if before is None and config.eval_before:
        before = evaluate_assembled(a, task.test, "eval before", progress, rank, world)
    tracker = _tracker(a, out_dir, before) if config.tracking != "none" and rank == 0 else None
    # what rank 0 reports is what Tune and the results see: the other ranks skip the meta-device trace
    estimated = estimated_memory(config, a.device.type, list(a.plan.layers), world, bool(a.checkpointed),
                                 a.plan.task.generative) if rank == 0 else None
    periodic = PeriodicEval(a, checkpoints, eval_steps, rank, world, estimated) \
        if config.train.eval_every or eval_steps else None
    # dynamic first (its checkpointed state), the evaluation before the tracker (which logs it);
    # the tracker opens its store in on_train_start, after the checkpoint restored its records
    callbacks = tuple(cb for cb in (a.dynamic, periodic, tracker) if cb is not None)
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
    loop["costs"]["estimated_memory"] = estimated
    return {"before": before, "after": after, "after_per_example": per_example, "train": loop, "params": count_trainable(a.model),
            "adapted_blocks": adapted_blocks(a.model, a.plan.blocks_path),
            "dynamic": a.dynamic.summary() if a.dynamic else None, "workers": world,
            "checkpointed_blocks": a.checkpointed,
            "device": torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else a.device.type}


def cost_metrics(costs: dict[str, Any], estimated: int | None) -> dict[str, Any]:
    """A run's costs as it reports them (`raylsl.training.costs`), the estimate beside them when known."""
    out = {k: v for k, v in costs.items() if k != "peak_memory_source"}
    return {**out, "estimated_memory": estimated} if estimated is not None else out


def _tracker(a: Assembled, out_dir: Path, before: dict[str, Any] | None):
    from raylsl.tracking import make_tracker

    config = a.plan.config
    blocks = f"{len(a.plan.layers)} of {a.plan.num_blocks}: {', '.join(map(str, a.plan.layers))}"
    return make_tracker(config.tracking, config.tracking_uri, out_dir, a.plan.name, blocks, config.to_dict(), before)
