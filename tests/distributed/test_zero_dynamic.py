"""IST and LISA under DeepSpeed ZeRO 1/2/3: inactive blocks' reduced gradients are zero and their
weights stay bit-identical.

Two gloo processes run the Ray worker's own pieces (`adapt`, `_engine`, `train_loop`) without Ray
(its ~30 s start-up per run would triple this test); the Ray path itself is covered by
test_ray_train.py. A recording callback gathers every block's LoRA weights after each step.
"""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import write_task

STEPS = 6
STAGES = ("zero1", "zero2", "zero3")


class _Recorder:
    """After each step (and before the first), rank 0 keeps a copy of each block's LoRA weights."""

    def __init__(self, dynamic, stage: str, rank: int):
        self.dynamic, self.stage, self.rank = dynamic, stage, rank
        self.weights: list[dict[int, list[torch.Tensor]]] = []
        self.active: list[list[int]] = []
        self.zero_grads: list[list[int]] = []

    def snapshot(self) -> None:
        import deepspeed

        params = [p for block in self.dynamic.params.values() for p in block]
        with deepspeed.zero.GatheredParameters(params, enabled=self.stage == "zero3"):  # collective
            if self.rank == 0:
                self.weights.append({i: [p.detach().clone() for p in ps] for i, ps in self.dynamic.params.items()})

    def on_train_start(self, state):
        self.snapshot()

    def on_step_start(self, state): ...

    def on_before_optimizer_step(self, state):
        from deepspeed.utils import safe_get_full_grad

        # ZeRO's reduced gradient of each block (collective): zero exactly for the inactive ones.
        self.zero_grads.append([i for i, ps in sorted(self.dynamic.params.items())
                                if all(not safe_get_full_grad(p).any() for p in ps)])

    def on_step_end(self, state, metrics):
        self.active.append(list(self.dynamic.active))
        self.snapshot()

    def on_train_end(self, state): ...

    def state_dict(self):
        return {}


class _NoCheckpoints:
    def save(self, *args, **kwargs): ...

    def restore(self, *args, **kwargs):
        return 0


def _run_stages(rank: int, world: int, port: int, root: str, selector: str) -> None:
    import torch.distributed as dist

    from raylsl.assemble import assemble
    from raylsl.config import load_config
    from raylsl.distributed.deepspeed_engine import full_config
    from raylsl.distributed.ray_train import _engine
    from raylsl.plan import build_plan
    from raylsl.training.loop import train_loop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for stage in STAGES:
        config = load_config(None, {
            "model": "tiny-llama", "task.name": f"{root}/colours.jsonl", "output_dir": root, "name": stage,
            "data.test_size": 16, "data.val_size": 16, "train.steps": STEPS, "train.batch_size": 4,
            "train.warmup_steps": 0, "train.lr": 2e-2, "train.weight_decay": 0.1, "selector": selector,
            "workers": world, "deepspeed": stage, f"{selector}.interval": 2,
            **({"ist.n_update": 1, "ist.probe_batch_size": 4} if selector == "ist" else {"lisa.n_active": 1})})
        plan, _ = build_plan(config, stage, storage="", layers=[0, 1, 2, 3])
        a = assemble(plan, torch.device("cpu"))
        engine = _engine(a, world, full_config(plan.deepspeed, config.train, bf16=False))
        recorder = _Recorder(a.dynamic, stage, rank)
        run_dir = Path(root) / stage
        run_dir.mkdir(exist_ok=True)
        train_loop(a.model, a.objective, plan.task.train, config.train, run_dir, (a.dynamic, recorder),
                   progress=False, engine=engine, checkpoints=_NoCheckpoints(), rank=rank, world=world)
        if rank == 0:
            torch.save({"weights": recorder.weights, "active": recorder.active, "zero_grads": recorder.zero_grads}, run_dir / "trace.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("selector", ["ist", pytest.param("lisa", marks=pytest.mark.long)])
def test_inactive_blocks_are_bit_identical_under_zero(selector, tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    write_task(tmp_path / "colours.jsonl")
    mp.spawn(_run_stages, args=(2, _free_port(), str(tmp_path), selector), nprocs=2, join=True)
    for stage in STAGES:
        trace = torch.load(tmp_path / stage / "trace.pt")
        weights, active = trace["weights"], trace["active"]
        assert len(active) == STEPS and all(len(a) == 1 for a in active)
        assert len({a[0] for a in active}) > 1, f"{stage}: the active block never changed"
        for step, chosen in enumerate(active):
            assert trace["zero_grads"][step] == [b for b in range(4) if b not in chosen], (stage, step)
            before, after = weights[step], weights[step + 1]
            for block in before:
                same = all(torch.equal(x, y) for x, y in zip(before[block], after[block]))
                # lora_B starts at 0 and the first update moves it, so an active block always changes.
                assert same == (block not in chosen), (stage, step, block, chosen)
