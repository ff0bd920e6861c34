"""raylsl: layer-selective LoRA fine-tuning.

    import raylsl
    sel = raylsl.select_layers("smollm2-135m", "sarcasm", selector="cka", n=15)
    sel.layers, sel.scores.scores
    raylsl.estimate({"model": "llama-3.1-8b", "data.max_length": 2048}, gpu_memory="80GB").fits
    raylsl.sweep_report("runs/sweep-...", objectives="val_acc,peak_memory").recommend(cost="peak_memory")
"""

from raylsl.api import estimate, select_layers, sweep_report

__version__ = "0.1.0"
__all__ = ["estimate", "select_layers", "sweep_report"]
