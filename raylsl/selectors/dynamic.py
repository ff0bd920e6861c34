"""Dynamic selectors: adapters exist in every block, and a changing subset trains each step.

    ist   IST, importance-aware sparse tuning (Yao et al., "Layer-wise Importance Matters",
          EMNLP Findings 2024): a bandit over blocks learned by response suppression.
    lisa  LISA-style resampling (Pan et al. 2024) as the random dynamic baseline: every
          ``interval`` steps, ``n_active`` blocks drawn uniformly without replacement.

An inactive block gets no update at all:

- one process: ``requires_grad`` follows the active set (inactive blocks' weight gradients are
  never computed) and any gradient left is dropped (set to None) before the step, so AdamW skips
  the block entirely: no momentum step, no weight decay, moments untouched;
- DDP: toggling ``requires_grad`` would break the reducer, so the gradients are computed, zeroed by a
  hook and dropped before the step: AdamW skips the block as above;
- DeepSpeed ZeRO: the optimizer steps flattened per-group partitions and cannot skip a parameter, so
  the callback asks for one optimizer param group per block (`optimizer_groups`), zeroes inactive
  blocks' gradients in backward by a hook (before ZeRO reduces them, so they count in neither the
  clipping norm nor the moments) and sets their groups' lr to 0 for the step: the weights stay
  bit-identical (AdamW's update and decoupled weight decay both scale with lr). Their Adam moments
  do decay by beta1/beta2 while the block waits, which the other two paths avoid.

Every decision is made on rank 0 and broadcast, so all data-parallel ranks train the same blocks.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raylsl.errors import ConfigError
from raylsl.objective import to_device
from raylsl.selectors.base import Budget, LayerScores, Selector, TrainingContext, register_selector
from raylsl.selectors.lora_blocks import lora_params_by_block, require_lora_outputs, scaled_lora
from raylsl.selectors.plots import plot_trajectory
from raylsl.callbacks import Callback, LoopState


def collective_device() -> torch.device:
    """Where tensors given to collectives must live: the current GPU under NCCL (which cannot
    move CPU tensors), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_rank0(values: torch.Tensor) -> torch.Tensor:
    """Rank 0's tensor on every rank, on the caller's device (a no-op without torch.distributed)."""
    if not _distributed():
        return values
    on_group = values.to(collective_device())
    dist.broadcast(on_group, src=0)
    return on_group.to(values.device)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def block_count(value: int | float, num_blocks: int, key: str) -> int:
    """A count or a fraction of L, as a count in 1..L."""
    try:
        return Budget(value).count(num_blocks)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


class ActiveBlocksCallback(Callback, ABC):
    """Trains only the blocks `choose_active` returns for each step."""

    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx
        self.params = lora_params_by_block(ctx.model, ctx.blocks_path)
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.active: list[int] = []
        self.counts = [0] * ctx.num_blocks
        self.updated_params: list[int] = []
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    @abstractmethod
    def choose_active(self, step: int) -> list[int]:
        """Blocks to train at ``step`` (rank 0's answer is broadcast)."""

    @abstractmethod
    def write(self, run_dir: Path) -> None:
        """Writes the selector's record into the run directory."""

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups: one per block, tagged ``block``, then one for any other trainable
        parameter (an encoder's classifier head), so that ZeRO can hold a block still by its group."""
        in_blocks = {id(p) for params in self.params.values() for p in params}
        rest = [p for p in self.ctx.model.parameters() if p.requires_grad and id(p) not in in_blocks]
        groups = [{"params": params, "block": index} for index, params in sorted(self.params.items())]
        return groups + ([{"params": rest, "block": None}] if rest else [])

    def on_train_start(self, state: LoopState) -> None:
        if _distributed():  # zero inactive blocks' gradients before DDP or ZeRO reduces them
            for index, params in self.params.items():
                for param in params:
                    self._hooks.append(param.register_hook(lambda grad, i=index: grad if i in self.active
                                                           else torch.zeros_like(grad)))

    def on_train_end(self, state: LoopState) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for params in self.params.values():
            for param in params:
                param.requires_grad_(True)
        if not _distributed() or dist.get_rank() == 0:
            self.write(state.run_dir)

    def on_step_start(self, state: LoopState) -> None:
        chosen = torch.zeros(self.ctx.num_blocks, dtype=torch.long)
        chosen[self.choose_active(state.step)] = 1
        self.active = broadcast_from_rank0(chosen).nonzero().flatten().tolist()
        if not _distributed():
            # In one process, autograd can skip inactive blocks' weight gradients altogether.
            # (Under DDP/DeepSpeed toggling requires_grad breaks the reducer: there the gradient
            # hook of on_train_start, the dropped gradients and the lr-0 groups below keep
            # inactive blocks still.)
            for index, params in self.params.items():
                for param in params:
                    param.requires_grad_(index in self.active)
        for i in self.active:
            self.counts[i] += 1
        self.updated_params.append(sum(p.numel() for i in self.active for p in self.params.get(i, [])))
        state.extra_metrics["active_blocks"] = self.active

    def on_before_optimizer_step(self, state: LoopState) -> None:
        keep = set(self.active)
        for index, params in self.params.items():
            if index not in keep:
                for param in params:
                    param.grad = None
        # Per-block groups (ZeRO): lr 0 for this step; the schedule sets every group's lr again after it.
        for group in getattr(state.optimizer, "param_groups", []):
            if group.get("block") is not None and group["block"] not in keep:
                group["lr"] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "active": self.active, "counts": self.counts,
                "updated_params": self.updated_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.active, self.counts, self.updated_params = state["active"], state["counts"], state["updated_params"]

    def summary(self) -> dict[str, Any]:
        existing = sum(p.numel() for params in self.params.values() for p in params)
        steps = max(len(self.updated_params), 1)
        return {"adapter_params_existing": existing,
                "adapter_params_updated_per_step": sum(self.updated_params) / steps,
                "steps_trained_per_block": self.counts}


# --- IST ----------------------------------------------------------------------------------------

def ist_update(importance: torch.Tensor, subsets: list[list[int]], losses: list[float], mu: float,
               variant: str = "paper") -> torch.Tensor:
    """One IST importance update (Eq. 9-10).

    ``r_j = exp(-L_j) - mean_k exp(-L_k)``; every block of subset j gains ``mu * r_j``. The
    ``reference`` variant (antgroup's ist.py) multiplies each gain by ``sigmoid'(I_i)`` at the
    importance before this update.
    """
    rewards = torch.exp(-torch.tensor(losses, dtype=torch.float64))
    rewards = rewards - rewards.mean()
    new = importance.clone().double()
    slope = torch.sigmoid(importance.double()) * (1 - torch.sigmoid(importance.double()))
    for subset, reward in zip(subsets, rewards):
        index = torch.tensor(subset, dtype=torch.long)
        gain = mu * reward * (slope[index] if variant == "reference" else 1.0)
        new[index] += gain
    return new


def probe_subsets(importance: torch.Tensor, n_probe: int, n_candidates: int, variant: str,
                  generator: torch.Generator) -> list[list[int]]:
    """The N_c candidate subsets of N_v blocks for one importance update.

    ``paper``: uniform draws (Eq. 8 samples subsets at random; its I means "worth training", so a
    uniform probe is what credits every block fairly). ``reference`` (antgroup's ist.py): each
    subset is ``multinomial(sigmoid(I), N_v)`` without replacement, so blocks it believes safe to
    suppress are suppressed more often, and a subset equal to one already drawn in this update is
    drawn again (not when fewer distinct subsets exist than N_c; given up after 10,000 tries, which
    only importances hundreds of units apart can reach).
    """
    L = importance.numel()
    tries = 10_000 if math.comb(L, n_probe) >= n_candidates else 1
    subsets: list[list[int]] = []
    for _ in range(n_candidates):
        for _attempt in range(tries):
            if variant == "reference":
                draw = torch.multinomial(torch.sigmoid(importance.double()), n_probe, generator=generator)
            else:
                draw = torch.randperm(L, generator=generator)[:n_probe]
            subset = sorted(draw.tolist())
            if variant != "reference" or subset not in subsets:
                break
        subsets.append(subset)
    return subsets


@dataclass(frozen=True)
class ISTConfig:
    n_update: int | float = 0.25
    """N_u: blocks trained per step (count, or fraction of L)."""
    n_probe: int | float = 0.5
    """N_v: blocks in each candidate subset (count, or fraction of L)."""
    n_candidates: int = 3
    """N_c: candidate subsets per importance update."""
    interval: int = 10
    """T_c: steps between importance updates."""
    beta: float = 0.25
    """Factor on the suppressed blocks' LoRA output during a probe."""
    mu: float = 10.0
    """Importance learning rate (paper: 10 commonsense, 100 arithmetic)."""
    probe_batch_size: int = 16
    """Examples per probe batch, drawn from the validation slice held out of train."""
    variant: str = "paper"
    """paper, or reference: draw probe subsets by multinomial(sigmoid(I)) without repeats, suppress
    and credit the sampled subset, train blocks drawn by multinomial(sigmoid(-I)), and scale the
    update by sigmoid'(I), as antgroup's ist.py does."""

    def __post_init__(self) -> None:
        if self.variant not in ("paper", "reference"):
            raise ConfigError(f"ist.variant={self.variant!r} must be paper or reference")
        if self.n_candidates < 2:
            raise ConfigError(f"ist.n_candidates={self.n_candidates} must be >= 2 (rewards are relative)")
        if self.interval < 1 or self.probe_batch_size < 1:
            raise ConfigError("ist.interval and ist.probe_batch_size must be >= 1")
        if not 0 <= self.beta <= 1:
            raise ConfigError(f"ist.beta={self.beta} must be in [0, 1]")


class ISTCallback(ActiveBlocksCallback):
    def __init__(self, config: ISTConfig, ctx: TrainingContext):
        super().__init__(ctx)
        ISTSelector.require_validation(len(ctx.validation))
        require_lora_outputs(ctx.model, ISTSelector.name)
        self.config = config
        self.n_update = block_count(config.n_update, ctx.num_blocks, "ist.n_update")
        self.n_probe = block_count(config.n_probe, ctx.num_blocks, "ist.n_probe")
        self.importance = torch.zeros(ctx.num_blocks, dtype=torch.float64)
        self.trajectory: list[list[float]] = []

    def choose_active(self, step: int) -> list[int]:
        weights = torch.sigmoid(self.importance)
        if self.config.variant == "reference":
            return torch.multinomial(1 - weights, self.n_update, generator=self.generator).tolist()
        draws = torch.rand(self.ctx.num_blocks, generator=self.generator, dtype=torch.float64) * weights
        return sorted(range(self.ctx.num_blocks), key=lambda i: (-float(draws[i]), i))[: self.n_update]

    def on_step_start(self, state: LoopState) -> None:
        self.trajectory.append(self.importance.tolist())
        state.extra_metrics["importance"] = [round(v, 6) for v in self.importance.tolist()]
        super().on_step_start(state)

    def on_step_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        if state.step % self.config.interval == 0:
            self.importance = broadcast_from_rank0(self.probe_update(state.model))

    def probe_update(self, model: torch.nn.Module) -> torch.Tensor:
        """Draws N_c subsets, measures the probe loss with response suppression, updates I."""
        L, cfg = self.ctx.num_blocks, self.config
        picks = torch.randperm(len(self.ctx.validation), generator=self.generator)[: cfg.probe_batch_size]
        batch = self.ctx.objective.batch([self.ctx.validation[i] for i in picks])
        batch = to_device(batch, next(model.parameters()).device)
        subsets = probe_subsets(self.importance, self.n_probe, cfg.n_candidates, cfg.variant, self.generator)
        losses = []
        was_training = model.training
        model.eval()
        try:
            for subset in subsets:
                suppressed = subset if cfg.variant == "reference" else [i for i in range(L) if i not in subset]
                with torch.no_grad(), scaled_lora(model, self.ctx.blocks_path, {i: cfg.beta for i in suppressed}):
                    losses.append(float(self.ctx.objective.loss(model, batch)))
        finally:
            model.train(was_training)
        return ist_update(self.importance, subsets, losses, cfg.mu, cfg.variant)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "importance": self.importance, "trajectory": self.trajectory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.importance, self.trajectory = state["importance"], state["trajectory"]

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "final_importance": self.importance.tolist()}

    def write(self, run_dir: Path) -> None:
        """``ist.json`` (per-step importance, per-block training counts) and ``ist_importance.png``."""
        (run_dir / "ist.json").write_text(json.dumps({**self.summary(), "importance_per_step": self.trajectory}))
        plot_trajectory(self.trajectory, run_dir / "ist_importance.png", "IST importance", "importance I")


# --- LISA ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LisaConfig:
    n_active: int | float = 0.25
    """Blocks trained at a time (count, or fraction of L)."""
    interval: int = 20
    """K: steps between redraws."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError(f"lisa.interval={self.interval} must be >= 1")


class LisaCallback(ActiveBlocksCallback):
    def __init__(self, config: LisaConfig, ctx: TrainingContext):
        super().__init__(ctx)
        self.config = config
        self.n_active = block_count(config.n_active, ctx.num_blocks, "lisa.n_active")

    def choose_active(self, step: int) -> list[int]:
        if step % self.config.interval == 0 or not self.active:
            return sorted(torch.randperm(self.ctx.num_blocks, generator=self.generator)[: self.n_active].tolist())
        return self.active

    def write(self, run_dir: Path) -> None:
        (run_dir / "lisa.json").write_text(json.dumps(self.summary()))


class _Dynamic(Selector):
    """Adapters in every block; the choice happens during training through a callback."""

    needs_data = False
    uses_budget = False

    def score(self, ctx, num_blocks: int) -> LayerScores:
        return LayerScores(self.name, (1.0,) * num_blocks, "")

    def choose(self, scores: LayerScores, budget: Budget) -> list[int]:
        return list(range(len(scores.scores)))


@register_selector
class ISTSelector(_Dynamic):
    name, Config = "ist", ISTConfig
    reads_validation = "probes on the validation slice held out of train"

    def training_callback(self, ctx: TrainingContext) -> ISTCallback:
        return ISTCallback(self.config, ctx)


@register_selector
class LisaSelector(_Dynamic):
    name, Config = "lisa", LisaConfig

    def training_callback(self, ctx: TrainingContext) -> LisaCallback:
        return LisaCallback(self.config, ctx)
