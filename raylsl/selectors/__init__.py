"""Layer selectors: score transformer blocks and choose which get LoRA adapters.

Importing this package registers every built-in selector.
"""

from raylsl.selectors import activation, cka, dynamic, flexora, gradient, heuristics  # noqa: F401  (registration)
from raylsl.selectors.base import (Budget, LayerScores, ScoringContext, Selector, TrainingContext, available_selectors,
                                   build_selector, check_budget, choose, register_selector)
from raylsl.selectors.cka import linear_cka
from raylsl.selectors.runner import Selection, calibration_sample, run_selector, select_blocks

__all__ = ["Budget", "LayerScores", "ScoringContext", "Selection", "Selector", "TrainingContext", "available_selectors",
           "build_selector", "calibration_sample", "check_budget", "choose", "linear_cka", "register_selector", "run_selector",
           "select_blocks"]
