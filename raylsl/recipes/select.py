"""``raylsl select``: score the blocks, choose, and record the scores (JSON), a ranked table and a
bar plot in a run directory, without training."""

from __future__ import annotations

from pathlib import Path

from raylsl.config import RunConfig
from raylsl.errors import ConfigError
from raylsl.plan import build_plan, check_config
from raylsl.recipes.train import create_run_dir, write_selection
from raylsl.results import format_layers
from raylsl.selectors import Selection
from raylsl.selectors.plots import ranked_table


def select(config: RunConfig) -> tuple[Selection, Path]:
    if config.selector is None:
        raise ConfigError("raylsl select needs a selector: --selector cka (or selector=cka)")
    check_config(config)
    plan, _ = build_plan(config, name="select", storage="")
    run = create_run_dir(config, prefix=f"select-{config.selector}-")
    write_selection(plan.selection, run)
    return plan.selection, run.local


def summary(selection: Selection, run_dir: Path) -> str:
    cache = " (scores from cache)" if selection.cached else ""
    return "\n".join([
        ranked_table(selection), "",
        f"chosen blocks: {format_layers(selection.layers)} ({len(selection.layers)} of {len(selection.scores.scores)})",
        f"selection time: {selection.seconds:.2f} s{cache}",
        f"scores: {run_dir / 'scores.json'}  plot: {run_dir / 'scores.png'}",
    ])
