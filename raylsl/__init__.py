"""raylsl: layer-selective LoRA fine-tuning.

    import raylsl
    sel = raylsl.select_layers("smollm2-135m", "sarcasm", selector="cka", n=15)
    sel.layers, sel.scores.scores
"""

from raylsl.api import select_layers

__version__ = "0.1.0"
__all__ = ["select_layers"]
