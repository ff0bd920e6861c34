"""Multiple-choice tasks (context, choices, label) for decoders and encoders.

Decoders, as lm-evaluation-harness scores multiple choice: each choice is a continuation of the
context (a space between them unless one side has it); its score is the sum of the continuation
tokens' log-probabilities. ``acc`` takes the argmax of that sum, ``acc_norm`` of the sum divided by
the continuation's length in bytes; ``loss`` is the mean NLL per token of the correct
continuations. Training minimises the NLL of the correct continuation's tokens only. Every
(context, choice) is tokenized once per objective.

Encoders: each (context, choice) pair is encoded, a multiple-choice head scores it, and training
minimises cross-entropy over the choices (``loss`` is per example).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raylsl.data import MCExample
from raylsl.models import DECODER, ENCODER
from raylsl.objective.base import loss_metrics
from raylsl.objective.causal import VERIFY_EXAMPLES, VERIFY_RTOL, CausalTargets, Group, Tokens, continuation_logprobs


class DecoderMC(CausalTargets):
    kind = DECODER
    sums = ("acc", "acc_norm", "nll", "tokens", "n")

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layout = None
        self.cached_scoring: bool | None = None
        """Whether evaluation reuses each context's KV cache, checked at the first evaluation."""
        self._encoded: dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def encode_pair(self, context: str, choice: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Context and continuation token ids; the continuation keeps at most ``max_length - 1``
        tokens and the context is truncated from the left to fit."""
        key = (context, choice)
        if key not in self._encoded:
            cont = choice if context[-1:].isspace() or choice[:1].isspace() else " " + choice
            ctx_ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
            cont_ids = self.tokenizer(cont, add_special_tokens=False)["input_ids"][: self.max_length - 1]
            self._encoded[key] = (tuple(ctx_ids[-(self.max_length - len(cont_ids)):]), tuple(cont_ids))
        return self._encoded[key]

    def encode(self, context: str, choice: str) -> tuple[list[int], int]:
        """Token ids of context + continuation and the continuation's length in tokens."""
        ctx, cont = self.encode_pair(context, choice)
        return list(ctx + cont), len(cont)

    def tokens(self, example: MCExample) -> Tokens:
        ctx, cont = self.encode_pair(example.context, example.choices[example.label])
        return Tokens(ctx + cont, (False,) * len(ctx) + (True,) * len(cont))

    def length(self, example: MCExample) -> int:
        return len(self.encode_pair(example.context, example.choices[0])[0])

    def choice_logprobs(self, model: nn.Module, examples: list[MCExample], use_cache: bool = True) -> list[list[float]]:
        """Summed log-probability of every choice of every example. A context is encoded once when
        all its choices fit beside the same truncated context (always, unless truncation bites)."""
        groups, where = [], []
        for ex in examples:
            pairs = [self.encode_pair(ex.context, c) for c in ex.choices]
            if all(ctx == pairs[0][0] for ctx, _ in pairs):
                where.append([(len(groups), j) for j in range(len(pairs))])
                groups.append(Group(pairs[0][0], tuple(cont for _, cont in pairs)))
            else:
                where.append([(len(groups) + j, 0) for j in range(len(pairs))])
                groups += [Group(ctx, (cont,)) for ctx, cont in pairs]
        scores = continuation_logprobs(model, groups, self.tokenizer.pad_token_id, use_cache)
        return [[scores[g][k] for g, k in spots] for spots in where]

    def evaluate_batch(self, model: nn.Module, examples: list[MCExample]) -> list[dict[str, float]]:
        if self.cached_scoring is None:
            self.cached_scoring = _cache_agrees(self, model, examples[:VERIFY_EXAMPLES])
        results = []
        for ex, scores in zip(examples, self.choice_logprobs(model, examples, self.cached_scoring)):
            normed = [s / max(len(c.encode()), 1) for s, c in zip(scores, ex.choices)]
            results.append({"acc": float(_argmax(scores) == ex.label), "acc_norm": float(_argmax(normed) == ex.label),
                            "nll": -scores[ex.label], "n": 1.0, "tokens": float(sum(self.tokens(ex).targets))})
        return results

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums.get("n", 0), 1)
        return {"acc": sums["acc"] / n, "acc_norm": sums["acc_norm"] / n, **loss_metrics(sums)}


def _cache_agrees(objective: DecoderMC, model: nn.Module, examples: list[MCExample]) -> bool:
    """Scores a few examples with and without the shared-context cache; keeps the cache only if
    both give the same log-probabilities (to float tolerance)."""
    import warnings

    try:
        fast = objective.choice_logprobs(model, examples, use_cache=True)
    except Exception:  # a model without a batch-selectable KV cache
        fast = None
    plain = objective.choice_logprobs(model, examples, use_cache=False)
    agrees = fast is not None and all(abs(a - b) <= VERIFY_RTOL * max(abs(b), 1.0)
                                      for xs, ys in zip(fast, plain) for a, b in zip(xs, ys))
    if not agrees:
        warnings.warn("raylsl: scoring choices through the context's KV cache did not match scoring each "
                      "(context, choice) alone; scoring them one by one (slower, same result)", RuntimeWarning)
    return agrees


def _argmax(values: list[float]) -> int:
    """Index of the first largest value (ties go to the earlier choice)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


class EncoderMC:
    kind = ENCODER
    sums = ("acc", "nll", "tokens", "n")

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def length(self, example: MCExample) -> int:
        return len(example.context)

    def batch(self, examples: list[MCExample]) -> dict[str, torch.Tensor]:
        width = max(len(ex.choices) for ex in examples)
        contexts, choices = [], []
        for ex in examples:
            padded_choices = list(ex.choices) + [""] * (width - len(ex.choices))
            contexts += [ex.context] * width
            choices += padded_choices
        enc = self.tokenizer(contexts, choices, truncation="only_first", max_length=self.max_length,
                             padding=True, return_tensors="pt")
        out = {k: v.view(len(examples), width, -1) for k, v in enc.items()}
        out["choice_valid"] = torch.tensor([[i < len(ex.choices) for i in range(width)] for ex in examples])
        out["labels"] = torch.tensor([ex.label for ex in examples])
        return out

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(examples, choices) head scores; missing choices are -inf."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        logits = model(**inputs).logits.float()
        return logits.masked_fill(~batch["choice_valid"], float("-inf"))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        total = F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="sum")
        return total / (normalizer or self.target_count(batch))

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(batch["labels"])

    def evaluate_batch(self, model: nn.Module, examples: list[MCExample]) -> list[dict[str, float]]:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.batch(examples).items()}
        logits = self.logits(model, batch)
        hits = (logits.argmax(-1) == batch["labels"]).tolist()
        nll = F.cross_entropy(logits, batch["labels"], reduction="none").tolist()
        return [{"acc": float(h), "nll": l, "tokens": 1.0, "n": 1.0} for h, l in zip(hits, nll)]

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"acc": sums["acc"] / max(sums.get("n", 0), 1), **loss_metrics(sums)}
