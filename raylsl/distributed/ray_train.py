"""Ray Train: the one training session in ``workers`` TorchTrainer workers, DDP or DeepSpeed ZeRO.

The driver hands the workers the `raylsl.plan.Plan` through ``train_loop_config`` (Ray's object
store): the config, the chosen blocks, the task's examples, the model source (a local model
directory's files, shipped) and the DeepSpeed config. Nothing a worker reads is a driver path, and
nothing the driver reads is a worker path: checkpoints (adapter, optimizer or ZeRO state, every
rank's RNG, callback state, the metrics log so far) and the final artifacts go through
``ray.train.report`` into the run's storage (``RUN/ray``), the measurements come back as the
training function's return value, and the driver copies the final checkpoint into its local run
directory. With ``max_failures`` Ray restarts a failed worker group from the newest checkpoint.

Device, precision, DeepSpeed accelerator and process-group backend are decided by each worker from
what Ray gave it: GPUs are requested with ``gpus_per_worker`` (auto: when the cluster has them),
never inferred from the driver, which usually runs on a CPU head.

``RAY_ADDRESS`` (which ``ray job submit`` sets) selects the cluster (`raylsl.cluster.init_ray`),
checked with a short timeout before a run writes anything (`raylsl.cluster.check_ray_address`:
Ray itself retries for minutes); without it a fresh local Ray is started. On a cluster of several
nodes ``storage`` must be storage every node reaches (a bucket or an NFS mount): Ray refuses a
driver-local path for checkpoints reported from other nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from raylsl.cluster import init_ray, worker_resources
from raylsl.errors import RaylslError
from raylsl.plan import Plan
from raylsl.storage import RunDir
from raylsl.tracking import RECORD_DIRS
from raylsl.training.checkpoint import read_checkpoint, read_trainer_state, write_checkpoint

OUTCOME = "outcome.json"


def scaling_config(config):
    """Ray Train's ScalingConfig from the run's resource settings."""
    from ray.train import ScalingConfig

    resources = worker_resources(config)
    return ScalingConfig(num_workers=config.workers, use_gpu="GPU" in resources, resources_per_worker=resources)


def train_in_workers(plan: Plan, run: RunDir, progress: bool, eval_steps=()) -> dict[str, Any]:
    """Runs the session in a TorchTrainer; returns rank 0's outcome. The final checkpoint's files
    (``adapter/``, ``metrics.jsonl``, a dynamic selector's record) land in ``run.local``. Inside a
    Tune trial, the workers' reports (evaluations during training at ``eval_steps``, checkpoints)
    are also the trial's results, which a sweep's scheduler reads.

    Raises:
        RaylslError: a worker failed on input the user can fix (its message, one line).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    init_ray(progress)
    plan = replace(plan, model=plan.model.shipped())
    config = plan.config
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    callbacks = []
    if _in_tune_session():
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"plan": plan, "progress": progress, "eval_steps": tuple(eval_steps)},
        scaling_config=scaling_config(config),
        run_config=RunConfig(name="train", storage_path=run.storage.uri_of("ray"),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks,
                             worker_runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore",
                                                              "TOKENIZERS_PARALLELISM": "false"}}),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise user_error(exc, run.storage.uri) or exc
    with result.checkpoint.as_directory() as directory:
        for item in Path(directory).iterdir():
            if item.name not in ("adapter", OUTCOME, *RECORD_DIRS) and not item.name.endswith(
                    (".json", ".jsonl", ".png")):
                continue
            target = run.local / item.name
            shutil.rmtree(target, ignore_errors=True)
            (shutil.copytree if item.is_dir() else shutil.copyfile)(item, target)
        outcome = json.loads((Path(directory) / OUTCOME).read_text())
    (run.local / OUTCOME).unlink(missing_ok=True)
    return outcome


def user_error(exc: BaseException, storage: str = "") -> RaylslError | None:
    """The user-fixable failure inside Ray's wrapping of a worker error, as a one-line error: a
    `RaylslError` a worker raised, or Ray's finding that the workers cannot reach the storage."""
    seen, stack = set(), [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, RaylslError):
            return RaylslError(str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        if "Unable to set up cluster storage" in str(err):
            return RaylslError(f"the Ray Train workers cannot reach the run's storage {storage}: with workers on other "
                               f"nodes, set storage= to a bucket (s3://bucket/prefix, gs://bucket/prefix) or to a path "
                               f"every node mounts (NFS)")
        stack += list(getattr(err, "worker_failures", {}).values())
        stack += [getattr(err, "cause", None), getattr(err, "controller_failure", None), err.__cause__, err.__context__]
    return None


class ReportCheckpoints:
    """Checkpoints reported to Ray (every rank writes its files into one checkpoint): through
    ``ray.train`` in Train workers, through ``ray.tune`` in a sweep trial that trains itself."""

    def __init__(self, rank: int, records: Path, api=None):
        import ray.train

        self.rank = rank
        self.records = records
        self.api = api or ray.train
        self.started = time.perf_counter()

    def peek(self) -> dict[str, Any] | None:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return read_trainer_state(Path(directory))["extra"]

    def save(self, step: int, engine, callbacks=(), extra: dict | None = None, metrics: dict | None = None) -> None:
        scalars = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        scalars["elapsed_s"] = time.perf_counter() - self.started
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp), step, engine, callbacks, self.rank, extra, self.records)
            self.api.report(scalars, checkpoint=self.api.Checkpoint.from_directory(tmp))

    def report(self, metrics: dict[str, Any]) -> None:
        """An intermediate result (an evaluation during training), reported by every rank."""
        self.api.report({**metrics, "elapsed_s": time.perf_counter() - self.started})

    def restore(self, engine, callbacks=()) -> int:
        checkpoint = self.api.get_checkpoint()
        if checkpoint is None:
            return 0
        with checkpoint.as_directory() as directory:
            return read_checkpoint(Path(directory), engine, callbacks, self.rank, self.records)


def _worker(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker: assemble the plan on this worker's device, run the session on its
    shard of every step, report the final artifacts, return the outcome (rank 0)."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")  # before deepspeed loads
    import warnings

    import ray.train
    import ray.train.torch

    from raylsl.assemble import assemble
    from raylsl.plan import load_base
    from raylsl.training.session import run_session

    warnings.filterwarnings("ignore")
    plan: Plan = cfg["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    finished = _finished_outcome()
    if finished is not None:  # a resumed run whose training had already ended: nothing to redo
        return finished if rank == 0 else None
    device = ray.train.torch.get_device()
    checkpointing = _check_fit_here(plan, device, world, context.get_local_world_size())
    ds_config = loaded = fractions = None
    if plan.deepspeed is not None:
        from raylsl.distributed.deepspeed_engine import full_config, local_fraction, sharded_init

        ds_config = full_config(plan.deepspeed, plan.config.train, bf16=_bf16(plan, device))
        if plan.zero_stage == 3:
            with sharded_init(ds_config):
                loaded = load_base(plan.model.spec(plan.kind), plan.config, device, sharded=True)
            fractions = [None] * world
            torch.distributed.all_gather_object(fractions, local_fraction(loaded[0]))
    a = assemble(plan, device, loaded, checkpointing)
    if plan.zero_stage == 3:
        a.objective.cached_scoring = False  # one forward per evaluation batch: every rank in lockstep
    engine = _engine(a, world, ds_config)
    with tempfile.TemporaryDirectory() as out:
        outcome = run_session(a, Path(out), engine, ReportCheckpoints(rank, Path(out)), rank, world, cfg["progress"],
                              eval_steps=cfg.get("eval_steps", ()))
        if fractions is not None:
            outcome["zero3_base_fraction_per_rank"] = fractions
        if rank == 0:
            (Path(out) / OUTCOME).write_text(json.dumps(outcome))
        ray.train.report({"step": outcome["train"]["steps"], "final": 1},
                         checkpoint=ray.train.Checkpoint.from_directory(out) if rank == 0 else None)
    return outcome if rank == 0 else None


def _check_fit_here(plan: Plan, device: torch.device, world: int, local_world: int) -> bool | None:
    """The fit check against this worker's own device, before it loads anything (the driver, on a
    CPU head, cannot see the workers' GPUs unless ``gpu_memory`` told it); returns whether
    activation checkpointing is on. CPU workers on one node share its memory."""
    from raylsl.fit import Device, available_host_memory, check_fit

    if plan.config.gpu_memory is not None:
        return plan.checkpointing
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        own = Device("cuda", props.total_memory, world, props.name)
    else:
        own = Device("cpu", available_host_memory() // max(local_world, 1), world, "this worker's share of its node")
    config = plan.config
    if plan.model.files is not None:  # a directory only the driver has: its copy shipped to this node
        config = replace(config, model=replace(config.model, name=plan.model.spec(plan.kind).name))
    return check_fit(config, own, list(plan.layers), plan.task.generative)


def _finished_outcome() -> dict[str, Any] | None:
    """The outcome stored in the newest checkpoint when that is a finished run's final report."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / OUTCOME
        return json.loads(path.read_text()) if path.is_file() else None


def _bf16(plan: Plan, device: torch.device) -> bool:
    return device.type == "cuda" and plan.config.train.precision in ("auto", "bf16")


def _engine(a, world: int, ds_config: dict | None):
    """DDP (when world > 1) or DeepSpeed; a dynamic selector gets one optimizer param group per
    block, so that ZeRO can hold a block still by its group."""
    from raylsl.training.engine import TorchEngine

    groups = a.dynamic.optimizer_groups() if a.dynamic else None
    if ds_config is None:
        return TorchEngine(a.model, a.plan.config.train, ddp=world > 1, groups=groups)
    from raylsl.distributed.deepspeed_engine import DeepSpeedEngine

    return DeepSpeedEngine(a.model, a.plan.config.train, ds_config, groups=groups)
