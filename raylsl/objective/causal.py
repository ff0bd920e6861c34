"""Causal-LM mechanics shared by every decoder objective.

Training: the loss is the summed negative log-likelihood of the target tokens. Two things make it
cheaper than a generic trainer without changing its value:

- **Packed rows.** A micro-batch's sequences are packed into as few rows as the longest one allows
  (first-fit decreasing), with ``position_ids`` restarting at each sequence, so no position is
  spent on padding; transformers' masks keep packed sequences apart (``attention_mask=None``,
  ``use_cache=False``).
- **Head only where the loss is.** A pre-hook on the model's output embeddings hands the head the
  hidden states of the positions whose next token is a target, so the vocabulary projection and
  the softmax run on those rows only; whatever the model does to the head's output afterwards
  (e.g. logit soft-capping) still happens.
- **Chunked head and loss** (``train.loss_chunk``). The hidden states at the target positions are
  taken from the head's input, and the head and the loss run over chunks of them, each chunk under
  activation checkpointing: its logits are freed after its forward and recomputed in backward, so
  peak memory holds one chunk's logits (chunk x vocabulary), not all targets' (a 128k vocabulary
  over 2k target tokens is 1 GB per sequence in fp32). Evaluation chunks the same way.

None is assumed to work: the first loss computed with a model is also computed the plain way
(padded batch, full logits) on a few examples, and the fastest layout that agrees is kept; a model
whose head or masks do not fit falls back, with one warning, to padded rows or full logits. The
chunked head is checked the same way (a model that transforms its logits after the head, such as
Gemma 2's soft-capping, would lose that in chunks) and dropped, with one warning, if it disagrees.

Evaluation: `continuation_logprobs` scores every continuation of a context with one forward pass
over the context; multi-token continuations reuse its KV cache.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raylsl.models.heads import chunked_nll, head_only_at, hidden_at, output_head, unwrap  # noqa: F401 (re-exported)
from raylsl.models.vision import image_inputs

LAYOUTS = ("packed", "padded", "full")
VERIFY_EXAMPLES = 4
"""Examples whose loss is checked against the plain computation before a fast layout is trusted."""
PACK_WIDTH = 128
"""Rows hold at least this many tokens, so short sequences share rows (attention within a row
costs width^2, linear layers only count tokens)."""
VERIFY_RTOL = 2e-3
"""Relative agreement required. Layouts change only float summation order (~1e-6 relative in fp32,
~1e-3 in bf16); a layout that leaks attention across packed sequences is off by percent."""


@dataclass(frozen=True)
class Tokens:
    """One tokenized sequence and which of its tokens the loss counts."""

    ids: tuple[int, ...]
    targets: tuple[bool, ...]
    """``targets[t]``: token t is predicted from position t-1 and counted; ``targets[0]`` is False."""


def make_tokens(parts: Sequence[tuple[list[int], bool]], max_length: int) -> Tokens:
    """Concatenates token segments (ids, is_target) and fits them into ``max_length``.

    A sequence that is too long first loses non-target tokens from the left (keeping one token
    before the first target: it predicts that target), then tokens from the right.
    """
    ids = [i for part, _ in parts for i in part]
    targets = [flag for part, flag in parts for _ in part]
    if targets:
        targets[0] = False  # nothing precedes the first token
    if len(ids) > max_length:
        first = next((t for t, flag in enumerate(targets) if flag), len(ids))
        drop = min(len(ids) - max_length, max(first - 1, 0))
        ids, targets = ids[drop:], targets[drop:]
        ids, targets = ids[:max_length], targets[:max_length]
        targets[0] = False
    return Tokens(tuple(ids), tuple(targets))


def padded(seqs: Sequence[Tokens], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded rows: ``input_ids``, ``attention_mask``, ``target_mask``."""
    width = max(len(s.ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    target = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, seq in enumerate(seqs):
        input_ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
        attention[row, : len(seq.ids)] = 1
        target[row, : len(seq.ids)] = torch.tensor(seq.targets)
    return {"input_ids": input_ids, "attention_mask": attention, "target_mask": target}


def packed(seqs: Sequence[Tokens], pad_id: int) -> dict[str, torch.Tensor]:
    """Sequences packed first-fit-decreasing into rows of at most ``max(longest, PACK_WIDTH)``
    tokens: ``packed_ids``, ``packed_positions`` (restarting at 0 for every sequence, and for the
    padding that closes a row) and ``packed_targets``."""
    capacity = max(max(len(s.ids) for s in seqs), PACK_WIDTH)
    rows: list[list[Tokens]] = []
    fill: list[int] = []
    for seq in sorted(seqs, key=lambda s: -len(s.ids)):
        row = next((r for r in range(len(rows)) if fill[r] + len(seq.ids) <= capacity), None)
        if row is None:
            rows.append([seq])
            fill.append(len(seq.ids))
        else:
            rows[row].append(seq)
            fill[row] += len(seq.ids)
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros_like(ids)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    for r, row in enumerate(rows):
        at = 0
        for seq in row:
            n = len(seq.ids)
            ids[r, at: at + n] = torch.tensor(seq.ids)
            positions[r, at: at + n] = torch.arange(n)
            targets[r, at: at + n] = torch.tensor(seq.targets)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"packed_ids": ids, "packed_positions": positions, "packed_targets": targets}


def position_nll(model: nn.Module, inputs: dict, predicts: torch.Tensor, labels: torch.Tensor,
                 chunk: int = 0) -> torch.Tensor:
    """NLL of ``labels`` at the positions ``predicts`` marks (a bool mask over the forward's rows
    and positions), the head run only there, in chunks of ``chunk`` positions when there are more
    (0: at once). Returns one value per position, in fp32."""
    if chunk and labels.shape[0] > chunk:
        with hidden_at(model, predicts) as captured:
            model(**inputs)
        if not captured:
            raise RuntimeError("the model's forward did not call its output embeddings")
        return chunked_nll(model, captured[0], labels, chunk)
    with head_only_at(model, predicts):
        logits = model(**inputs).logits
    return F.cross_entropy(logits.float(), labels, reduction="none")


def target_nll(model: nn.Module, batch: dict[str, torch.Tensor], layout: str, chunk: int = 0) -> torch.Tensor:
    """Summed NLL of the batch's target tokens, computed in ``layout`` (packed, padded or full),
    the head and loss in chunks of ``chunk`` target positions (0: at once; not with ``full``).
    A batch's images (`raylsl.models.vision.IMAGE_INPUTS`) go to the model with its padded rows."""
    if layout == "packed":
        ids, targets = batch["packed_ids"], batch["packed_targets"]
        inputs = {"input_ids": ids, "position_ids": batch["packed_positions"], "use_cache": False}
    else:
        ids, targets = batch["input_ids"], batch["target_mask"]
        inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"], "use_cache": False,
                  **image_inputs(batch)}
    labels = ids[:, 1:][targets[:, 1:]]
    predicts = F.pad(targets[:, 1:], (0, 1))  # position t predicts token t+1
    if layout == "full":
        logits = model(**inputs).logits[predicts]
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    return position_nll(model, inputs, predicts, labels, chunk).sum()


def sample_batch(batch: dict[str, torch.Tensor], seqs: Sequence[Tokens], pad_id: int) -> dict[str, torch.Tensor]:
    """Both layouts of ``seqs`` on the batch's device (for the one-time agreement check)."""
    device = batch["input_ids"].device
    return {k: v.to(device) for k, v in {**padded(seqs, pad_id), **packed(seqs, pad_id)}.items()}


def choose_layout(model: nn.Module, sample: dict[str, torch.Tensor], chunk: int = 0,
                  candidates: tuple[str, ...] = LAYOUTS[:-1]) -> tuple[str, int]:
    """The fastest of the ``candidates`` layouts whose loss on ``sample`` equals the full-logits
    loss, and ``chunk`` if the chunked head agrees too, else 0 (see module doc).

    Runs in eval mode with the RNG state restored afterwards, so a run's random stream (dropout,
    data) is the same whether or not this check happened in it. Under torch.distributed every rank
    takes the most conservative rank's answer (all ranks then make the same collective calls).
    """
    device = sample["input_ids"].device
    was_training = model.training
    model.eval()
    found, chunked = len(LAYOUTS) - 1, not chunk
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            reference = float(target_nll(model, sample, "full"))
            agrees = lambda value: abs(value - reference) <= VERIFY_RTOL * max(abs(reference), 1e-6)  # noqa: E731
            # Every layout runs, agreeing or not: under ZeRO-3 each forward is a collective, and
            # all ranks must make the same calls.
            for index, layout in reversed(list(enumerate(LAYOUTS[:-1]))):
                if layout not in candidates:
                    continue
                try:
                    value = float(target_nll(model, sample, layout))
                except Exception:  # a model whose forward rejects the layout's inputs
                    continue
                if agrees(value):
                    found = index
            if chunk:  # in chunks of one position, so the check never fits in a single chunk
                try:
                    chunked = agrees(float(target_nll(model, sample, "padded", chunk=1)))
                except Exception:  # the forward never calls the output embeddings
                    chunked = False
    finally:
        model.train(was_training)
    found = _max_over_ranks(found, device)
    chunked = chunk > 0 and _max_over_ranks(int(not chunked), device) == 0
    if LAYOUTS[found] != candidates[0]:
        warnings.warn(f"raylsl: {type(unwrap(model)).__name__}'s loss in the faster layout(s) did not match the "
                      f"plain computation; using the {LAYOUTS[found]} layout (slower, same result)", RuntimeWarning)
    if chunk and not chunked:
        warnings.warn(f"raylsl: {type(unwrap(model)).__name__}'s loss with the head in chunks (train.loss_chunk) did "
                      f"not match the plain computation; computing it at once", RuntimeWarning)
    return LAYOUTS[found], chunk if chunked and found < len(LAYOUTS) - 1 else 0


class CausalTargets(ABC):
    """Training on a causal LM's target tokens, for objectives that say which tokens are targets
    (`tokens`): batches in both layouts, the summed target NLL in the layout `choose_layout`
    picked at the first loss, and per-example target NLL for evaluation."""

    tokenizer = None
    layout: str | None = None
    """Training layout (packed / padded / full), chosen at the first loss computed."""
    loss_chunk: int = 0
    """Target positions per chunk of the head and loss (``train.loss_chunk``; 0: at once); set to 0
    at the first loss when the chunked head does not agree with the plain one."""

    @abstractmethod
    def tokens(self, example) -> Tokens:
        """The example's token ids and which of them are targets."""

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def fit(self, parts: Sequence[tuple[list[int], bool]]) -> Tokens:
        """Token segments (ids, is_target) as one sequence within ``max_length`` (`make_tokens`)."""
        return make_tokens(parts, self.max_length)

    def batch(self, examples: list) -> dict[str, torch.Tensor]:
        """The examples' target sequences as right-padded rows and as packed rows."""
        seqs = [self.tokens(ex) for ex in examples]
        pad = self.tokenizer.pad_token_id
        return {**padded(seqs, pad), **packed(seqs, pad)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        if self.layout is None:
            self.layout, self.loss_chunk = choose_layout(model, _head_rows(batch, self.tokenizer.pad_token_id),
                                                         self.loss_chunk)
        return target_nll(model, batch, self.layout, self.loss_chunk) / (normalizer or self.target_count(batch))

    def target_count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["target_mask"].sum())

    def target_nll_per_example(self, model: nn.Module, examples: list) -> list[tuple[float, int]]:
        """(summed target NLL, target count) of each example: one padded forward, the head only at
        the positions that predict a target."""
        return self.sequence_nll(model, [self.tokens(ex) for ex in examples])

    def sequence_nll(self, model: nn.Module, seqs: list[Tokens], images: dict | None = None) -> list[tuple[float, int]]:
        """(summed target NLL, target count) of each sequence, given the sequences' ``images``
        (`raylsl.models.vision.IMAGE_INPUTS`, in order)."""
        device = next(unwrap(model).parameters()).device
        batch = {k: v.to(device) for k, v in {**padded(seqs, self.tokenizer.pad_token_id), **(images or {})}.items()}
        targets = batch["target_mask"]
        predicts = F.pad(targets[:, 1:], (0, 1))
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False,
                  **image_inputs(batch)}
        nll = position_nll(model, inputs, predicts, batch["input_ids"][:, 1:][targets[:, 1:]], self.loss_chunk)
        rows = predicts.nonzero()[:, 0]
        sums = torch.zeros(len(seqs), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
        return [(float(total), int(count)) for total, count in zip(sums.tolist(), targets.sum(-1).tolist())]


def _head_rows(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """The first few sequences of a batch, in every layout (for `choose_layout`)."""
    seqs = []
    for row in range(min(VERIFY_EXAMPLES, batch["input_ids"].shape[0])):
        n = int(batch["attention_mask"][row].sum())
        seqs.append(Tokens(tuple(batch["input_ids"][row, :n].tolist()), tuple(batch["target_mask"][row, :n].tolist())))
    return sample_batch(batch, seqs, pad_id)


def _max_over_ranks(value: int, device: torch.device) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


# --- scoring continuations ------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """A context and the continuations to score after it."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


def continuation_logprobs(model: nn.Module, groups: Sequence[Group], pad_id: int,
                          use_cache: bool = True) -> list[list[float]]:
    """Summed log-probability of each continuation given its group's context.

    One forward pass over the (left-padded) contexts reads the next-token distribution at their
    last position, which scores single-token continuations outright; longer continuations are run
    after the contexts through their KV cache (one batched pass over every continuation), so a
    context is encoded once however many continuations it has. ``use_cache=False`` scores each
    (context + continuation) as its own sequence instead, the plain way.
    """
    if not use_cache:
        return _pairwise_logprobs(model, groups, pad_id)
    device = next(unwrap(model).parameters()).device
    width = max(len(g.context) for g in groups)
    ctx = torch.full((len(groups), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ctx)
    for row, group in enumerate(groups):
        ctx[row, width - len(group.context):] = torch.tensor(group.context)
        mask[row, width - len(group.context):] = 1
    ctx, mask = ctx.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    longer = [(row, c) for row, g in enumerate(groups) for c, cont in enumerate(g.continuations) if len(cont) > 1]
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[:, -1] = True
    with head_only_at(model, last):
        out = model(input_ids=ctx, attention_mask=mask, position_ids=positions, use_cache=bool(longer))
    first = torch.log_softmax(out.logits.float(), dim=-1)
    scores = [[float(first[row, cont[0]]) for cont in g.continuations] for row, g in enumerate(groups)]
    if longer:
        cache = out.past_key_values
        rows = torch.tensor([row for row, _ in longer], device=device)
        cache.batch_select_indices(rows)  # one copy of its context's cache per continuation
        tails = [groups[row].continuations[c] for row, c in longer]
        tail_width = max(len(t) for t in tails) - 1
        feed = torch.full((len(tails), tail_width), pad_id, dtype=torch.long)
        feed_mask = torch.zeros_like(feed)
        for i, tail in enumerate(tails):
            feed[i, : len(tail) - 1] = torch.tensor(tail[:-1])
            feed_mask[i, : len(tail) - 1] = 1
        feed, feed_mask = feed.to(device), feed_mask.to(device)
        tail_positions = mask.sum(-1)[rows, None] + torch.arange(tail_width, device=device)
        with head_only_at(model, feed_mask.bool()):
            logits = model(input_ids=feed, attention_mask=torch.cat([mask[rows], feed_mask], dim=1),
                           position_ids=tail_positions, past_key_values=cache, use_cache=True).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        at = 0
        for (row, c), tail in zip(longer, tails):
            picked = logprobs[at: at + len(tail) - 1].gather(-1, torch.tensor(tail[1:], device=device)[:, None])
            scores[row][c] += float(picked.sum())
            at += len(tail) - 1
    return scores


def _pairwise_logprobs(model: nn.Module, groups: Sequence[Group], pad_id: int) -> list[list[float]]:
    """Every (context + continuation) as its own right-padded sequence, full logits."""
    device = next(unwrap(model).parameters()).device
    seqs = [Tokens(g.context + cont, (False,) * len(g.context) + (True,) * len(cont))
            for g in groups for cont in g.continuations]
    batch = {k: v.to(device) for k, v in padded(seqs, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logprobs.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) * batch["target_mask"][:, 1:]
    totals = picked.sum(-1).tolist()
    out, at = [], 0
    for g in groups:
        out.append(totals[at: at + len(g.continuations)])
        at += len(g.continuations)
    return out
