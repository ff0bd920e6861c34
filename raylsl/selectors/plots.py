"""Human-readable views of a selection: a ranked table and a bar plot of score per block."""

from __future__ import annotations

from pathlib import Path

from raylsl.selectors.runner import Selection


def ranked_table(selection: Selection) -> str:
    """Blocks by descending score (ties: lower index first), chosen ones marked."""
    s = selection.scores
    chosen = set(selection.layers)
    order = sorted(range(len(s.scores)), key=lambda i: (-s.scores[i], i))
    lines = [f"{'rank':>4}  {'block':>5}  {s.method + ' score':>16}  chosen"]
    for rank, i in enumerate(order, 1):
        note = "  (undefined, excluded)" if i in s.excluded else ""
        lines.append(f"{rank:>4}  {i:>5}  {s.scores[i]:>16.6g}  {'*' if i in chosen else ''}{note}")
    return "\n".join(lines)


def plot_scores(selection: Selection, path: Path, title: str = "") -> Path:
    """Bar plot of score per block, chosen blocks highlighted; written as PNG."""
    plt = _pyplot()

    s = selection.scores
    chosen = set(selection.layers)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(s.scores)), 3.2))
    colours = ["tab:orange" if i in chosen else "tab:gray" for i in range(len(s.scores))]
    ax.bar(range(len(s.scores)), s.scores, color=colours)
    ax.set_xlabel("block")
    ax.set_ylabel(f"{s.method} score")
    ax.set_title(title or f"{s.method}: {len(chosen)} of {len(s.scores)} blocks chosen (orange)")
    ax.set_xticks(range(len(s.scores)))
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trajectory(trajectory: list[list[float]], path: Path, title: str, ylabel: str) -> None:
    """One line per block over steps (the IST paper's Figure 4 kind)."""
    import numpy as np

    plt = _pyplot()
    values = np.asarray(trajectory)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    cmap = plt.get_cmap("viridis")
    for block in range(values.shape[1]):
        ax.plot(values[:, block], color=cmap(block / max(values.shape[1] - 1, 1)), lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} per block (dark = first block, light = last)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    """pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
