"""Ray Train: the one training loop in ``workers`` TorchTrainer workers, DDP or DeepSpeed ZeRO.

The driver has already validated the run and chosen the blocks (static scores are computed
once, there); every worker loads the model, puts LoRA on exactly those blocks with the same seed,
and runs `raylsl.training.loop.train_loop` on its shard of each step's global batch. Checkpoints
(adapter, optimizer or ZeRO state, every rank's RNG, callback state) are reported through
``ray.train.report`` into ``RUN_DIR/ray``; with ``max_failures`` Ray restarts a failed worker group
from the newest one. ``RAY_ADDRESS`` (which ``ray job submit`` sets) selects the cluster; without it
a fresh local Ray is started.

Run directories are written by rank 0, so on a multi-node cluster ``output_dir`` must be storage
every node sees (NFS, a mounted bucket); on one machine nothing needs doing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raylsl.training.checkpoint import read_checkpoint, write_checkpoint


class RayCheckpoints:
    """Checkpoints reported to Ray Train (every rank writes its files into one checkpoint)."""

    def __init__(self, rank: int):
        self.rank = rank
        self.started = time.perf_counter()

    def save(self, step: int, engine, callbacks=(), metrics: dict | None = None) -> None:
        import ray.train

        scalars = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        scalars["elapsed_s"] = time.perf_counter() - self.started
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), step, engine, callbacks, self.rank)
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def restore(self, engine, callbacks=()) -> int:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as directory:
            return read_checkpoint(Path(directory), engine, callbacks, self.rank)


def train_with_ray(prepared, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Runs training in a TorchTrainer; returns rank 0's loop result (and dynamic-selector summary).

    The final adapter lands in ``run_dir / "adapter"``.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = prepared.config
    cuda = torch.cuda.is_available()
    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit` and by users) names the cluster; without it, a fresh
        # local Ray, never a head some earlier `ray start` left recorded on this machine.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=progress)
    env = {"PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    if not cuda:
        env["DS_ACCELERATOR"] = "cpu"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"layers": prepared.layers, "run_dir": str(run_dir.resolve()), "progress": progress},
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=cuda),
        run_config=RunConfig(name="train", storage_path=str((run_dir / "ray").resolve()),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": env}),
    )
    trainer.fit()
    return json.loads((run_dir / "worker_result.json").read_text())


def _worker(cfg: dict[str, Any]) -> None:
    """One Ray Train worker: the same setup and loop as a single-process run, on its shard."""
    import warnings

    import ray.train
    import ray.train.torch

    from raylsl.config import load_config
    from raylsl.recipes.train import adapt, prepare
    from raylsl.training.loop import train_loop

    warnings.filterwarnings("ignore")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    run_dir = Path(cfg["run_dir"])
    prepared = prepare(load_config(run_dir / "config.yaml"), layers=cfg["layers"], device=ray.train.torch.get_device())
    model, dynamic = adapt(prepared)
    engine = _engine(model, prepared.config, world, dynamic.optimizer_groups() if dynamic else None)
    callbacks = (dynamic,) if dynamic else ()
    result = train_loop(model, prepared.objective, prepared.task.train, prepared.config.train, run_dir, callbacks,
                        progress=cfg["progress"], engine=engine, checkpoints=RayCheckpoints(rank), rank=rank, world=world)
    engine.save_adapter(run_dir / "adapter", rank)
    if rank == 0:
        result["dynamic"] = dynamic.summary() if dynamic else None
        result["workers"] = world
        (run_dir / "worker_result.json").write_text(json.dumps(result))


def _engine(model, config, world: int, groups: list[dict] | None = None):
    """DDP (``ddp`` when world > 1) or DeepSpeed; ``groups`` are a dynamic selector's per-block
    optimizer param groups."""
    from raylsl.training.engine import TorchEngine

    if config.deepspeed is None:
        return TorchEngine(model, config.train, ddp=world > 1, groups=groups)
    from raylsl.distributed.deepspeed_engine import DeepSpeedEngine, deepspeed_config

    bf16 = torch.cuda.is_available() and config.train.precision in ("auto", "bf16")
    return DeepSpeedEngine(model, config.train, deepspeed_config(config.deepspeed), bf16=bf16, groups=groups)
