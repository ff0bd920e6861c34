"""``raylsl eval``: every metric of a trained run's adapter, or of a base model from a config."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from raylsl.assemble import Assembled
from raylsl.errors import ConfigError
from raylsl.objective import make_objective
from raylsl.plan import build_plan, load_run_config, local_device
from raylsl.storage import Storage, is_remote
from raylsl.training.session import evaluate_assembled


def evaluate_target(target: str | None, overrides: list[str], split: str = "test") -> dict[str, Any]:
    """Evaluates a run (its directory or storage URI: config and ``adapter/``) or a config file
    (the base model).

    Args:
        target: a run directory, a run's storage URI, a YAML config, or None for the defaults.
        overrides: ``key=value`` overrides applied on top.
        split: ``test`` or ``validation``.
    """
    if split not in ("test", "validation"):
        raise ConfigError(f"--split {split!r}: choose test or validation")
    if target is not None and (is_remote(target) or Path(target).is_dir()):
        with tempfile.TemporaryDirectory() as tmp:
            return _evaluate_run(Storage(target), Path(tmp), overrides, split)
    return evaluate_adapter(load_run_config(target, overrides), None, None, split)


def _evaluate_run(run: Storage, scratch: Path, overrides: list[str], split: str) -> dict[str, Any]:
    if not run.is_file("adapter/adapter_config.json"):
        raise ConfigError(f"{run.uri} holds no finished adapter (adapter/ is missing); train it to the end, or "
                          f"`raylsl train --resume {run.uri}`")
    config_path = run.local / "config.yaml" if run.local is not None else run.download("config.yaml", scratch / "config.yaml")
    layers = run.read_json("run.json")["layers"] if run.is_file("run.json") else None
    return evaluate_adapter(load_run_config(config_path, overrides), run.child("adapter"), layers, split)


def evaluate_adapter(config, adapter: Storage | None, layers: list[int] | None, split: str,
                     examples: list | None = None) -> dict[str, Any]:
    """Every metric of the base model (``adapter=None``) or of a saved peft adapter (read from
    wherever it is stored) on the ``split`` of the config's task (or of ``examples``, split by it)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = None if adapter is None else adapter.local or adapter.download("", Path(tmp) / "adapter")
        # A run's blocks are already chosen (its adapter holds them): no second selection.
        plan, (model, tokenizer) = build_plan(config, name="eval", storage="", layers=layers or [], keep_model=True,
                                              examples=examples)
        model.to(local_device())
        if local is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, local)
        a = Assembled(plan, model, tokenizer, make_objective(plan.kind, tokenizer, config.data.max_length), None,
                      local_device())
        metrics = evaluate_assembled(a, getattr(plan.task, split), f"eval {split}")
    return {"model": config.model, "task": config.task.name, "adapter": adapter.uri if adapter else None,
            "split": split, **metrics}
