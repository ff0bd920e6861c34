"""What the training loop and evaluation need from a model family and task kind, and the
evaluation loop itself.

An objective turns examples into device batches (`batch`), computes a summed loss over their
targets (`loss`), and scores examples for evaluation (`evaluate_batch`, which returns sums so that
shards and batches add up; `metrics` turns the sums into rates).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm


class Objective(Protocol):
    kind: str
    """decoder or encoder."""

    def batch(self, examples: list) -> dict[str, torch.Tensor]:
        """Tensors for a training (or scoring) forward pass over ``examples``."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        """Summed loss over the batch's targets divided by ``normalizer`` (default: their count)."""

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        """How many targets (answer tokens, or examples) the batch's loss sums over."""

    def length(self, example) -> int:
        """Token length of an example (evaluation batches examples of similar length)."""

    sums: tuple[str, ...]
    """The quantities `evaluate_batch` returns per example (summed over examples and ranks)."""

    def evaluate_batch(self, model: nn.Module, examples: list) -> list[dict[str, float]]:
        """Per example: a hit (0/1) per accuracy metric, ``nll`` and ``tokens`` (its share of the
        loss's numerator and denominator) and ``n`` (1)."""

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Rates from `evaluate_batch` values summed over examples (and ranks)."""


def make_objective(kind: str, tokenizer, max_length: int, generative: bool = False,
                   chat_template: str | None = None, generation: dict | None = None, loss_chunk: int = 0) -> Objective:
    """The objective for a model family (``kind``) and a task: multiple choice, or generative
    (`raylsl.objective.generative`, decoders only; ``generation``: its ``answer_pattern``,
    ``max_new_tokens`` and ``stop``). ``loss_chunk``: a decoder's head and loss run over chunks of
    that many target positions (`raylsl.objective.causal`). A vision-language model (``vlm``,
    ``tokenizer`` its processor) gets the image-aware objectives of `raylsl.objective.vision`."""
    from raylsl.models import ENCODER, VLM
    from raylsl.objective.multiple_choice import DecoderMC, EncoderMC

    if kind == VLM:
        from raylsl.objective.vision import VisionLM, VisionMC

        objective = (VisionLM(tokenizer, max_length, chat_template, **(generation or {})) if generative
                     else VisionMC(tokenizer, max_length, chat_template))
        objective.loss_chunk = loss_chunk
        return objective

    if generative:
        if kind == ENCODER:
            from raylsl.errors import ConfigError

            raise ConfigError("generative tasks (completion, alpaca, chat, text rows) train a decoder; this model "
                              "is an encoder: pick a decoder model, or give multiple-choice rows")
        from raylsl.objective.generative import DecoderLM

        objective = DecoderLM(tokenizer, max_length, chat_template, **(generation or {}))
    else:
        objective = (EncoderMC if kind == ENCODER else DecoderMC)(tokenizer, max_length)
    if kind != ENCODER:
        objective.loss_chunk = loss_chunk
    return objective


def run_objective(kind: str, tokenizer, config, generative: bool) -> Objective:
    """`make_objective` with a run config's task and data settings."""
    task = config.task
    return make_objective(kind, tokenizer, config.data.max_length, generative, task.chat_template,
                          {"answer_pattern": task.answer_pattern, "max_new_tokens": task.max_new_tokens,
                           "stop": task.stop}, config.train.loss_chunk)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def loss_metrics(sums: dict[str, float]) -> dict[str, float]:
    """Held-out loss (mean NLL per target) and its perplexity."""
    loss = sums["nll"] / max(sums["tokens"], 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, examples: list, batch_size: int,
             autocast: torch.autocast | None = None, progress: bool = False, desc: str = "eval",
             rank: int = 0, world: int = 1, per_example: bool = False) -> dict[str, Any]:
    """Every metric the objective has over ``examples`` (accuracies, loss, perplexity, ``n``);
    with ``per_example``, also ``"per_example"``: lists in the order of ``examples`` (what paired
    bootstrap intervals over the examples need; see `per_example_values`).

    Examples are batched by token length (longest first), so a batch pads little; the result does
    not depend on the order. With ``world > 1`` (call it on every rank) each rank scores every
    world-th example; shards are padded to one size, so every rank runs the same number of
    forward passes (ZeRO-3 gathers parameters collectively in each), and the sums are reduced.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -objective.length(examples[i]))
    indices = order[rank::world]
    counted = len(indices)
    shard = [examples[i] for i in indices] + [examples[order[0]]] * (math.ceil(len(order) / world) - counted)
    results: list[dict[str, float]] = []
    bar = tqdm(total=len(order), desc=desc, unit="ex", disable=not progress or rank != 0 or None, leave=False)
    try:
        for chunk in _chunks(shard, batch_size):
            with autocast or torch.autocast(device.type, enabled=False):
                results += objective.evaluate_batch(model, chunk)
            bar.update(len(chunk) * world)
    finally:
        bar.close()
        model.train(was_training)
    totals = torch.tensor([[r[k] for k in objective.sums] for r in results[:counted]] or [[0.0] * len(objective.sums)],
                          dtype=torch.float64).sum(0)
    if world > 1:
        import torch.distributed as dist

        totals = totals.to(device)
        dist.all_reduce(totals)
    sums = dict(zip(objective.sums, totals.tolist()))
    metrics = {**objective.metrics(sums), "n": int(sums["n"])}
    if per_example:
        pairs = [(i, per_example_values(r)) for i, r in zip(indices, results[:counted])]
        if world > 1:
            import torch.distributed as dist

            gathered: list = [None] * world
            dist.all_gather_object(gathered, pairs)
            pairs = [pair for part in gathered for pair in part]
        ordered = [values for _, values in sorted(pairs, key=lambda pair: pair[0])]
        metrics["per_example"] = {key: [values[key] for values in ordered] for key in (ordered[0] if ordered else {})}
    return metrics


def per_example_values(result: dict[str, float]) -> dict[str, float | None]:
    """One example's record: ``acc`` (multiple choice); generative tasks: ``loss`` (its mean target
    NLL), ``tokens`` (its target count) and ``exact_match`` (None without a reference)."""
    if "acc" in result:
        return {"acc": result["acc"]}
    return {"loss": result["nll"] / max(result["tokens"], 1), "tokens": int(result["tokens"]),
            "exact_match": result["em"] if result.get("em_n") else None}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start: start + size]
