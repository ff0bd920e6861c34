"""``raylsl select``: score the blocks, choose, and record the scores (JSON), a ranked table and a
bar plot in a run directory, without training."""

from __future__ import annotations

from pathlib import Path

from raylsl.config import RunConfig
from raylsl.errors import ConfigError
from raylsl.recipes.train import create_run_dir, format_layers, prepare, write_selection
from raylsl.selectors import Selection
from raylsl.selectors.report import ranked_table


def select(config: RunConfig) -> tuple[Selection, Path]:
    if config.selector is None:
        raise ConfigError("raylsl select needs a selector: --selector cka (or selector=cka)")
    prepared = prepare(config)
    run_dir = create_run_dir(config, prefix=f"select-{config.selector}-")
    write_selection(prepared.selection, run_dir)
    return prepared.selection, run_dir


def summary(selection: Selection, run_dir: Path) -> str:
    cache = " (scores from cache)" if selection.cached else ""
    return "\n".join([
        ranked_table(selection), "",
        f"chosen blocks: {format_layers(selection.layers)} ({len(selection.layers)} of {len(selection.scores.scores)})",
        f"selection time: {selection.seconds:.2f} s{cache}",
        f"scores: {run_dir / 'scores.json'}  plot: {run_dir / 'scores.png'}",
    ])
