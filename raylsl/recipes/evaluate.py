"""``raylsl eval``: test accuracy of a trained run's adapter, or of a base model from a config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raylsl.config import load_config
from raylsl.errors import ConfigError
from raylsl.recipes.train import evaluate_on, prepare


def evaluate_target(target: str | None, overrides: list[str], split: str = "test") -> dict[str, Any]:
    """Evaluates a run directory (its config and ``adapter/``) or a config file (the base model).

    Args:
        target: a run directory, a YAML config, or None for the defaults.
        overrides: ``key=value`` overrides applied on top.
        split: ``test`` or ``validation``.
    """
    if split not in ("test", "validation"):
        raise ConfigError(f"--split {split!r}: choose test or validation")
    path = Path(target) if target else None
    adapter, layers = None, None
    if path is not None and path.is_dir():
        adapter = path / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"{path} holds no finished adapter ({adapter} is missing); train it to the "
                              f"end, or `raylsl train --resume {path}`")
        layers = json.loads((path / "run.json").read_text())["layers"] if (path / "run.json").is_file() else None
        path = path / "config.yaml"
    # A run's blocks are already chosen (its adapter holds them): no second selection.
    prepared = prepare(load_config(path, overrides), layers=layers)
    model = prepared.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    examples = getattr(prepared.task, split)
    metrics = evaluate_on(prepared, model, examples)
    return {"model": prepared.config.model, "task": prepared.config.task.name, "adapter": str(adapter) if adapter else None,
            "split": split, **metrics}
