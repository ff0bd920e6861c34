"""How the loop updates the model: plain PyTorch (optionally DDP-wrapped) or DeepSpeed.

The loop calls ``backward(loss, last_micro)`` once per micro-batch and ``step()`` once per
optimizer step; callbacks run between the last backward and the step. An engine also saves and
restores its optimizer state and hands out the peft model for saving adapters.
"""

from __future__ import annotations

from pathlib import Path
import torch
from torch import nn

from raylsl.config import TrainSettings
from raylsl.optim import build_optimizer


class TorchEngine:
    """AdamW + schedule in this process; with ``ddp=True`` the forward module is DDP-wrapped
    (gradients averaged across ranks in backward)."""

    def __init__(self, model: nn.Module, settings: TrainSettings, ddp: bool = False, groups: list[dict] | None = None):
        self.peft_model = model
        self.settings = settings
        self.optimizer, self.scheduler = build_optimizer(model, settings, groups)
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [model.device.index] if next(model.parameters()).is_cuda else None
            self.module: nn.Module = DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.module = model

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        (loss / self.settings.grad_accum).backward()

    def step(self) -> None:
        if self.settings.max_grad_norm > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]  # the schedule's value, whatever a callback set on a group

    def save_state(self, path: Path, rank: int) -> None:
        if rank == 0:
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       path / "optimizer.pt")

    def load_state(self, path: Path) -> None:
        state = torch.load(path / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_adapter(self, path: Path, rank: int) -> None:
        """A standard peft adapter directory (rank 0 writes; replicas are identical)."""
        if rank == 0:
            self.peft_model.save_pretrained(path)

    def load_adapter(self, path: Path) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.peft_model, load_file(path / "adapter_model.safetensors"))
