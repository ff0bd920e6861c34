"""Evaluating a saved adapter (or a base model) on a task split, wherever the adapter is stored:
what ``raylsl eval`` and a sweep's test-split evaluation of its front both run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raylsl.assemble import Assembled
from raylsl.errors import ConfigError
from raylsl.objective import run_objective
from raylsl.plan import build_plan, local_device
from raylsl.storage import Storage
from raylsl.training.session import evaluate_assembled


def evaluate_adapter(config, adapter: Storage | None, layers: list[int] | None, split: str,
                     examples: list | None = None, samples: int = 0) -> dict[str, Any]:
    """Every metric of the base model (``adapter=None``) or of a saved peft adapter (read from
    wherever it is stored) on the ``split`` of the config's task (or of ``examples``, split by it).

    ``samples``: also what the model generates for the split's first ``samples`` examples
    (generative tasks), under ``"samples"`` (see `DecoderLM.samples`)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = None if adapter is None else adapter.local or adapter.download("", Path(tmp) / "adapter")
        # A run's blocks are already chosen (its adapter holds them): no second selection.
        plan, (model, tokenizer) = build_plan(config, name="eval", storage="", layers=layers or [], keep_model=True,
                                              examples=examples, fit=False)
        if local is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, local)
        objective = run_objective(plan.kind, tokenizer, config, plan.task.generative)
        a = Assembled(plan, model, tokenizer, objective, None, local_device())
        if samples and not plan.task.generative:
            raise ConfigError(f"--samples shows generated answers; task {config.task.name} is multiple choice "
                              f"(its metrics are acc/acc_norm): drop --samples")
        metrics = evaluate_assembled(a, getattr(plan.task, split), f"eval {split}")
        if samples:
            metrics["samples"] = objective.samples(a.model, getattr(plan.task, split)[:samples],
                                                   config.train.eval_batch_size)
    return {"model": config.model.name, "task": config.task.name, "adapter": adapter.uri if adapter else None,
            "split": split, **metrics}
