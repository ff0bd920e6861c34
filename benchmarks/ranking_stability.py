"""Ranking stability of block scores: do the rankings survive a new calibration draw, or a new task?

    python benchmarks/ranking_stability.py [--seeds 5] [--model minilm-l6]

For cka, activation and gradient on SmolLM2 (or ``--model``, e.g. the MiniLM-L6 encoder): Kendall
tau between the rankings from ``--seeds`` calibration seeds on sarcasm (mean over pairs), and
between sarcasm and quartz (seed 0). The Act-LoRA paper claims activation rankings are more stable
than gradient rankings. Writes ``benchmarks/ranking_stability.json`` (SmolLM2) or
``benchmarks/ranking_stability_<model>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from _common import Bench, kendall_tau

OUT = Path(__file__).with_suffix(".json")
SELECTORS = ("cka", "activation", "gradient")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    bench = Bench(args.model)
    out = OUT if args.model == "smollm2-135m" else OUT.with_name(f"ranking_stability_{args.model}.json")
    rows = {}
    for name in SELECTORS:
        by_seed = [bench.select(name, seed=s).scores.scores for s in range(args.seeds)]
        quartz = bench.select(name, task="quartz").scores.scores
        taus = [kendall_tau(a, b) for a, b in itertools.combinations(by_seed, 2)]
        rows[name] = {"tau_seeds_mean": sum(taus) / len(taus), "tau_seeds_min": min(taus),
                      "tau_sarcasm_vs_quartz": kendall_tau(by_seed[0], quartz),
                      "scores_seed0": by_seed[0], "scores_quartz": quartz}
    print(f"\nranking stability, {args.model}, {len(bench.blocks)} blocks, 128 calibration examples")
    print(f"{'selector':<11} {'tau seeds (mean)':>16} {'tau seeds (min)':>15} {'tau sarcasm~quartz':>18}")
    for name, row in rows.items():
        print(f"{name:<11} {row['tau_seeds_mean']:>16.3f} {row['tau_seeds_min']:>15.3f} {row['tau_sarcasm_vs_quartz']:>18.3f}")
    out.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "rows": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
