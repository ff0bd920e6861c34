"""Training loss and multiple-choice scoring for decoders and encoders.

Decoders (as lm-evaluation-harness scores multiple choice): each choice is a continuation of the
context; its score is the sum of the continuation tokens' log-probabilities. ``acc`` takes the
argmax of that sum, ``acc_norm`` of the sum divided by the continuation's length in bytes. Training
minimises the mean negative log-likelihood of the correct continuation's tokens only.

Encoders: each (context, choice) pair is encoded, a multiple-choice head scores it, and training
minimises cross-entropy over the choices.
"""

from __future__ import annotations

from typing import Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from raylsl.data import MCExample
from raylsl.models import DECODER, ENCODER


class Objective(Protocol):
    """What the training loop and evaluation need from a model family."""

    kind: str
    """decoder or encoder."""

    def batch(self, examples: list[MCExample], train: bool) -> dict[str, torch.Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        """Summed loss over the batch's targets divided by ``normalizer`` (default: their count)."""

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        """How many targets (answer tokens, or examples) the batch's loss averages over."""

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def make_objective(kind: str, tokenizer, max_length: int) -> Objective:
    return (EncoderMC if kind == ENCODER else DecoderMC)(tokenizer, max_length)


class DecoderMC:
    kind = DECODER

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, context: str, choice: str) -> tuple[list[int], int]:
        """Token ids of context + continuation and the continuation's length in tokens."""
        cont = choice if context[-1:].isspace() or choice[:1].isspace() else " " + choice
        ctx_ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        cont_ids = self.tokenizer(cont, add_special_tokens=False)["input_ids"][: self.max_length - 1]
        ctx_ids = ctx_ids[-(self.max_length - len(cont_ids)):]
        return ctx_ids + cont_ids, len(cont_ids)

    def batch(self, examples: list[MCExample], train: bool) -> dict[str, torch.Tensor]:
        if train:
            pairs = [(ex.context, ex.choices[ex.label]) for ex in examples]
        else:
            pairs = [(ex.context, c) for ex in examples for c in ex.choices]
        encoded = [self.encode(ctx, choice) for ctx, choice in pairs]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        target = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (ids, n_cont) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            target[row, len(ids) - n_cont: len(ids)] = True
        out = {"input_ids": input_ids, "attention_mask": attention, "target_mask": target}
        if not train:
            out.update(_choice_layout(examples))
            out["choice_bytes"] = torch.tensor([max(len(c.encode()), 1) for _, c in pairs], dtype=torch.float)
        return out

    def _token_logprobs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logprobs.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return picked * batch["target_mask"][:, 1:]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        return -self._token_logprobs(model, batch).sum() / (normalizer or self.target_count(batch))

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["target_mask"][:, 1:].sum())

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = self._token_logprobs(model, batch).sum(-1)
        return {"acc": _unflatten(total, batch),
                "acc_norm": _unflatten(total / batch["choice_bytes"], batch)}


class EncoderMC:
    kind = ENCODER

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def batch(self, examples: list[MCExample], train: bool) -> dict[str, torch.Tensor]:
        width = max(len(ex.choices) for ex in examples)
        contexts, choices = [], []
        for ex in examples:
            padded = list(ex.choices) + [""] * (width - len(ex.choices))
            contexts += [ex.context] * width
            choices += padded
        enc = self.tokenizer(contexts, choices, truncation="only_first", max_length=self.max_length,
                             padding=True, return_tensors="pt")
        out = {k: v.view(len(examples), width, -1) for k, v in enc.items()}
        out["choice_valid"] = torch.tensor([[i < len(ex.choices) for i in range(width)] for ex in examples])
        out["labels"] = torch.tensor([ex.label for ex in examples])
        return out

    def _logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**inputs).logits.float()
        return logits.masked_fill(~batch["choice_valid"], float("-inf"))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        total = F.cross_entropy(self._logits(model, batch), batch["labels"], reduction="sum")
        return total / (normalizer or self.target_count(batch))

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"acc": self._logits(model, batch)}


def _choice_layout(examples: list[MCExample]) -> dict[str, torch.Tensor]:
    """Where each flattened (example, choice) pair goes in an (examples, max_choices) grid."""
    rows = [i for i, ex in enumerate(examples) for _ in ex.choices]
    cols = [j for ex in examples for j in range(len(ex.choices))]
    return {"pair_row": torch.tensor(rows), "pair_col": torch.tensor(cols),
            "labels": torch.tensor([ex.label for ex in examples])}


def _unflatten(values: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    grid = torch.full((len(batch["labels"]), int(batch["pair_col"].max()) + 1), float("-inf"),
                      device=values.device)
    grid[batch["pair_row"], batch["pair_col"]] = values
    return grid


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, examples: list[MCExample], batch_size: int,
             autocast: torch.autocast | None = None) -> dict[str, float]:
    """Accuracy (and, for decoders, length-normalized accuracy) over ``examples``.

    Returns:
        ``{"acc": ..., "acc_norm": ..., "n": ...}`` (``acc_norm`` only for decoders).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct: dict[str, int] = {}
    for chunk in _chunks(examples, batch_size):
        batch = to_device(objective.batch(chunk, train=False), device)
        with autocast or torch.autocast(device.type, enabled=False):
            scores = objective.scores(model, batch)
        for name, grid in scores.items():
            correct[name] = correct.get(name, 0) + int((grid.argmax(-1) == batch["labels"]).sum())
    model.train(was_training)
    return {**{name: hits / len(examples) for name, hits in correct.items()}, "n": len(examples)}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start: start + size]
