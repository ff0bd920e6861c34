"""Flexora (Wei et al., ACL 2025): per-block gates learned on validation loss choose the blocks.

Search stage: LoRA on every block, gate logits ``alpha`` (zero init, Adam lr 0.01), gate
``g_i = L * softmax(alpha)_i`` multiplying block i's LoRA branch. Each search step trains the
LoRA weights on a training batch with the gates detached, then takes one alpha step from
``dL_val/dalpha`` accumulated over ``val_batches`` validation batches at the current LoRA weights
(first order: no term through the LoRA update), as the reference code (kithib/Flexora) does.
The validation batches come from the slice held out of train, never from the evaluation split.

The search's alpha are this selector's scores: blocks with ``alpha > 0`` are chosen (the
reference rule, a variable count), or the top n when a budget is given (needed for sweeps over
N). The recipe then fine-tunes only the chosen blocks from a fresh init; the search stage's cost is
recorded apart (``details.search_seconds``).

Departure from the reference code: its gate hook sits on lora_dropout, lora_A and lora_B, so the
branch is scaled by g^3. raylsl applies the gate once (g); ``variant=reference`` reproduces g^3.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from raylsl.errors import ConfigError
from raylsl.lora import apply_lora
from raylsl.objective import to_device
from raylsl.selectors.base import Budget, LayerScores, ScoringContext, Selector, choose, register_selector
from raylsl.selectors.lora_blocks import require_lora_outputs, scaled_lora
from raylsl.selectors.runner import examples_fingerprint
from raylsl.optim import build_optimizer
from raylsl.data import micro_batches


@dataclass(frozen=True)
class FlexoraConfig:
    search_steps: int = 30
    """Steps of the search stage (each: one LoRA step, one alpha step)."""
    alpha_lr: float = 0.01
    """Adam learning rate of the gate logits."""
    val_batches: int = 8
    """Validation batches whose loss gradient makes one alpha step."""
    val_batch_size: int = 8
    """Examples per validation batch."""
    variant: str = "paper"
    """paper (gate g applied once) or reference (g^3, as kithib/Flexora's hooks compound)."""

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "reference"):
            raise ConfigError(f"flexora.variant={self.variant!r} must be paper or reference")
        for key in ("search_steps", "val_batches", "val_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"flexora.{key}={getattr(self, key)} must be >= 1")
        if self.alpha_lr <= 0:
            raise ConfigError(f"flexora.alpha_lr={self.alpha_lr} must be > 0")


def gates(alpha: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """``L * softmax(alpha)``, cubed under the reference variant."""
    g = alpha.numel() * torch.softmax(alpha, dim=0)
    return g**3 if variant == "reference" else g


@register_selector
class FlexoraSelector(Selector):
    name = "flexora"
    Config = FlexoraConfig
    reads_validation = "learns its gates on the validation slice"
    uses_budget = False  # without n, the rule is alpha > 0

    def cache_context(self, ctx: ScoringContext) -> dict[str, Any]:
        return {"train": examples_fingerprint(ctx.train), "validation": examples_fingerprint(ctx.validation),
                **self._search_settings(ctx.lora, ctx.train_settings)}

    def config_key(self, config) -> dict[str, Any]:
        return self._search_settings(config.lora, config.train)

    @staticmethod
    def _search_settings(lora, train) -> dict[str, Any]:
        """The search trains LoRA: its rank, alpha, dropout and the optimizer's settings matter."""
        return {"lora": dataclasses.asdict(lora), "lr": train.lr, "batch_size": train.batch_size, "seed": train.seed,
                "warmup_steps": train.warmup_steps, "weight_decay": train.weight_decay}

    def choose(self, scores: LayerScores, budget: Budget) -> list[int]:
        if budget != Budget():
            return choose(scores, budget)
        chosen = [i for i, alpha in enumerate(scores.scores) if alpha > 0]
        if not chosen:
            raise ConfigError("flexora: no gate ended with alpha > 0; give a budget (n=...) or more search_steps")
        return chosen

    def score(self, ctx: ScoringContext, num_blocks: int) -> LayerScores:
        self.require_validation(len(ctx.validation))
        cfg = self.config
        torch.manual_seed(ctx.seed)
        model = apply_lora(ctx.model, list(range(num_blocks)), ctx.lora, ctx.blocks_path, ctx.blocks,
                           ctx.objective.kind)
        try:
            require_lora_outputs(model, self.name)
            trajectory, seconds, alpha = self._search(model, ctx, num_blocks)
        finally:
            model.unload()  # the base model goes back untouched for the fine-tune stage
        return LayerScores(self.name, tuple(alpha), "",
                           details={"trajectory": trajectory, "search_seconds": seconds, "search_steps": cfg.search_steps})

    def _search(self, model, ctx: ScoringContext, num_blocks: int) -> tuple[list[list[float]], float, list[float]]:
        cfg = self.config
        device = next(model.parameters()).device
        settings = dataclasses.replace(ctx.train_settings, steps=cfg.search_steps, grad_accum=1,
                                       warmup_steps=min(ctx.train_settings.warmup_steps, cfg.search_steps - 1))
        lora_params = [p for p in model.parameters() if p.requires_grad]
        lora_opt, schedule = build_optimizer(model, settings)
        alpha = torch.zeros(num_blocks, device=device, requires_grad=True)
        alpha_opt = torch.optim.Adam([alpha], lr=cfg.alpha_lr)
        val_order = torch.randperm(len(ctx.validation), generator=torch.Generator().manual_seed(ctx.seed)).tolist()
        trajectory, started = [], time.perf_counter()
        model.train()
        for step in range(cfg.search_steps):
            # LoRA step on the training loss, gates fixed.
            g = gates(alpha, cfg.variant).detach()
            (indices,) = micro_batches(len(ctx.train), step, settings)
            batch = to_device(ctx.objective.batch([ctx.train[i] for i in indices]), device)
            with scaled_lora(model, ctx.blocks_path, dict(enumerate(g))):
                ctx.objective.loss(model, batch).backward()
            lora_opt.step()
            schedule.step()
            lora_opt.zero_grad(set_to_none=True)
            # Alpha step on the validation loss at the current LoRA weights (first order).
            for p in lora_params:
                p.requires_grad_(False)
            for b in range(cfg.val_batches):
                start = ((step * cfg.val_batches + b) * cfg.val_batch_size) % len(val_order)
                picks = [val_order[(start + k) % len(val_order)] for k in range(cfg.val_batch_size)]
                vbatch = to_device(ctx.objective.batch([ctx.validation[i] for i in picks]), device)
                with scaled_lora(model, ctx.blocks_path, dict(enumerate(gates(alpha, cfg.variant)))):
                    (ctx.objective.loss(model, vbatch) / cfg.val_batches).backward()
            for p in lora_params:
                p.requires_grad_(True)
            alpha_opt.step()
            alpha_opt.zero_grad(set_to_none=True)
            trajectory.append(alpha.detach().cpu().tolist())
        return trajectory, time.perf_counter() - started, alpha.detach().cpu().tolist()
