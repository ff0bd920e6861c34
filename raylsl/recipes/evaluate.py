"""``raylsl eval``: every metric of a trained run's adapter, or of a base model from a config."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from raylsl.errors import ConfigError
from raylsl.evaluation import evaluate_adapter
from raylsl.plan import load_run_config
from raylsl.storage import Storage, is_remote


def evaluate_target(target: str | None, overrides: list[str], split: str = "test", samples: int = 0) -> dict[str, Any]:
    """Evaluates a run (its directory or storage URI: config and ``adapter/``) or a config file
    (the base model).

    Args:
        target: a run directory, a run's storage URI, a YAML config, or None for the defaults.
        overrides: ``key=value`` overrides applied on top.
        split: ``test`` or ``validation``.
        samples: write what the model generates for the split's first ``samples`` examples, with
            the extracted and reference answers, to ``samples_SPLIT.jsonl`` in the run (its
            directory or storage), or in the working directory for a base model; the result's
            ``samples`` is that file's location.
    """
    if split not in ("test", "validation"):
        raise ConfigError(f"--split {split!r}: choose test or validation")
    if samples < 0:
        raise ConfigError(f"--samples {samples}: give a number of examples >= 0")
    with tempfile.TemporaryDirectory() as tmp:
        if target is not None and (is_remote(target) or Path(target).is_dir()):
            run = Storage(target)
            result = _evaluate_run(run, Path(tmp), overrides, split, samples)
        else:
            run = None
            result = evaluate_adapter(load_run_config(target, overrides), None, None, split, samples=samples)
        if samples:
            name = f"samples_{split}.jsonl"
            where = run or Storage(Path.cwd())
            where.write_text(name, "".join(json.dumps(row) + "\n" for row in result["samples"]))
            result["samples"] = where.uri_of(name)
    return result


def finished_run_config(run: Storage, scratch: Path) -> Path:
    """The ``config.yaml`` of a run (its directory or storage) as a local file, downloaded into
    ``scratch`` from remote storage.

    Raises:
        ConfigError: the run has no finished adapter.
    """
    if not run.is_file("adapter/adapter_config.json"):
        raise ConfigError(f"{run.uri} holds no finished adapter (adapter/ is missing); train it to the end, or "
                          f"`raylsl train --resume {run.uri}`")
    return run.local / "config.yaml" if run.local is not None else run.download("config.yaml", scratch / "config.yaml")


def _evaluate_run(run: Storage, scratch: Path, overrides: list[str], split: str, samples: int = 0) -> dict[str, Any]:
    config_path = finished_run_config(run, scratch)
    layers = run.read_json("run.json")["layers"] if run.is_file("run.json") else None
    return evaluate_adapter(load_run_config(config_path, overrides), run.child("adapter"), layers, split,
                            samples=samples)
