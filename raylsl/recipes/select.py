"""``raylsl select``: score the blocks, choose, and record the scores (JSON), a ranked table and a
bar plot in a run directory, without training."""

from __future__ import annotations

from pathlib import Path

from raylsl.cluster import init_ray
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
    if config.workers:  # a run that trains in Ray workers scores where they train (`raylsl.scoring`)
        init_ray(progress=False)
    plan, _ = build_plan(config, name="select", storage="")
    run = create_run_dir(config, prefix=f"select-{config.selector}-")
    write_selection(plan.selection, run)
    return plan.selection, run.local


def summary(selection: Selection, run_dir: Path) -> str:
    cache = " (scores from cache)" if selection.cached else ""
    where = f", {placement_text(selection.placement)}" if selection.placement else ""
    return "\n".join([
        ranked_table(selection), "",
        f"chosen blocks: {format_layers(selection.layers)} ({len(selection.layers)} of {len(selection.scores.scores)})",
        f"selection time: {selection.seconds:.2f} s{cache}{where}",
        f"scores: {run_dir / 'scores.json'}  plot: {run_dir / 'scores.png'}",
    ])


def placement_text(placement: dict) -> str:
    """Where the blocks were scored, in words."""
    where = f"in a Ray task on node {placement['ray_node'][:12]}" if "ray_node" in placement else "in this process"
    how = "one block at a time" if placement["streamed"] else "whole model"
    return f"scored {where} on {placement['device']}, {how}"
