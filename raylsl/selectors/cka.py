"""CKA dissimilarity (Ogawa et al., "Layer-wise LoRA fine-tuning: a similarity metric approach").

Blocks whose input and output representations are least similar are the most worth adapting:
``score_i = 1 - CKA(pool(h_i), pool(h_{i+1}))`` over the calibration set, one pooled vector per
sample, as in the reference code (c2d-usp/Layer-wise-LoRA-with-CKA). A block whose pooled input
has zero variance (an encoder's first block under CLS pooling: the CLS embedding is identical for
every sample) has undefined CKA; it is excluded with a warning, as the reference drops that layer,
unless ``include_undefined`` is set (then it scores 0, i.e. "unchanged").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from raylsl.models import ENCODER
from raylsl.selectors.base import LayerScores, ScoringContext, register_selector
from raylsl.selectors.blockwise import BlockStatistics, BlockwiseSelector
from raylsl.selectors.hooks import capture_block, mask_for

_ZERO = 1e-10


def _centered(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def has_zero_variance(x: torch.Tensor) -> bool:
    """True when every sample's vector is the same (the centred matrix vanishes)."""
    xc = _centered(x)
    return float(xc.norm()) <= _ZERO * max(float(x.double().norm()), 1.0)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two ``(n_samples, features)`` matrices, computed in float64.

    Uses the feature form ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` when there are at
    least as many samples as features, else the cheaper N x N Gram form
    ``<K_c, L_c>_F / (||K_c||_F ||L_c||_F)``. Both are the same number.

    Returns:
        A value in [0, 1]; 0.0 with a RuntimeWarning when either input has zero variance
        (CKA is undefined there).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs two (n_samples, features) matrices with equal n, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if has_zero_variance(x) or has_zero_variance(y):
        warnings.warn("linear_cka: an input has zero variance across samples; CKA is undefined, returning 0.0",
                      RuntimeWarning, stacklevel=2)
        return 0.0
    xc, yc = _centered(x), _centered(y)
    if xc.shape[0] >= max(xc.shape[1], yc.shape[1]):
        cross = (xc.T @ yc).square().sum()
        norm = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    else:
        k, l = xc @ xc.T, yc @ yc.T
        cross = (k * l).sum()
        norm = torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l)
    return float((cross / norm).clamp(0.0, 1.0))


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row: ``last`` non-pad token (right padding), ``cls`` (first), or masked ``mean``."""
    hidden = hidden.reshape(-1, *hidden.shape[-2:]).float()
    if how == "last":
        return hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
    if how == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).float()
    return (hidden * weights).sum(1) / weights.sum(1)


@dataclass(frozen=True)
class CKAConfig:
    pooling: str | None = None
    """last (decoders' default on multiple choice), cls (encoders' default) or mean (generative
    tasks' default); None picks by model kind and task (`default_pooling`)."""
    include_undefined: bool = False
    """Keep blocks whose CKA is undefined (zero-variance input) as candidates, scored 0."""

    def __post_init__(self) -> None:
        if self.pooling not in (None, "last", "cls", "mean"):
            from raylsl.errors import ConfigError

            raise ConfigError(f"cka.pooling={self.pooling!r} must be last, cls or mean")


def default_pooling(objective) -> str:
    """Encoders: the CLS token. Decoders on multiple choice: the last token (the end of the answer,
    which differs between samples). Decoders on generative tasks: the mean over the prompt and
    target tokens, since their last token is a chat template's end-of-turn marker or the end of
    sequence, the same in every sample (block 0's input would have no variance at all)."""
    if objective.kind == ENCODER:
        return "cls"
    return "mean" if getattr(objective, "generative", False) else "last"


@register_selector
class CKASelector(BlockwiseSelector):
    name = "cka"
    Config = CKAConfig

    def statistics(self, ctx: ScoringContext, num_blocks: int) -> BlockStatistics:
        return _PooledPairs(self.config.pooling or default_pooling(ctx.objective), self.config.include_undefined,
                            num_blocks)


class _PooledPairs(BlockStatistics):
    """Each block's pooled input and output per calibration sample, reduced to ``1 - CKA``."""

    def __init__(self, how: str, include_undefined: bool, num_blocks: int):
        self.how, self.include_undefined = how, include_undefined
        self.pairs: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.scores = [0.0] * num_blocks
        self.excluded: list[int] = []

    def watch(self, index: int, block: nn.Module):
        return capture_block(index, block, self._collect)

    def _collect(self, index: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        ins, outs = self.pairs.setdefault(index, ([], []))
        ins.append(pool(h_in, mask_for(h_in, self.mask), self.how).cpu())
        outs.append(pool(h_out, mask_for(h_out, self.mask), self.how).cpu())

    def finish(self, index: int) -> None:
        ins, outs = self.pairs.pop(index)
        x, y = torch.cat(ins), torch.cat(outs)
        if has_zero_variance(x) or has_zero_variance(y):
            warnings.warn(f"cka: block {index}'s pooled ({self.how}) input or output is identical for every sample; "
                          f"CKA is undefined there, so the block is "
                          f"{'scored 0' if self.include_undefined else 'excluded'}", RuntimeWarning)
            if not self.include_undefined:
                self.excluded.append(index)
            return
        self.scores[index] = 1.0 - linear_cka(x, y)

    def result(self) -> LayerScores:
        return LayerScores(CKASelector.name, tuple(self.scores), "", tuple(self.excluded))
