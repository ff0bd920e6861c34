"""raylsl: layer-selective LoRA fine-tuning."""

__version__ = "0.1.0"
