"""Training losses and evaluation for each model family and task kind."""

from raylsl.objective.base import Objective, evaluate, make_objective, run_objective, to_device
from raylsl.objective.generative import DecoderLM
from raylsl.objective.multiple_choice import DecoderMC, EncoderMC
from raylsl.objective.vision import VisionLM, VisionMC

__all__ = ["DecoderLM", "DecoderMC", "EncoderMC", "Objective", "VisionLM", "VisionMC", "evaluate", "make_objective",
           "run_objective", "to_device"]
