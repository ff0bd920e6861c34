"""Where and how a run's blocks are scored by a selector that reads data.

**Where.** In this process, unless it uses Ray (a run that trains in Ray workers, a sweep) on a
cluster that is more than this node. Then scoring is a Ray task that asks for what one training
worker asks for (`raylsl.cluster.worker_resources`: a GPU when the cluster has them, the CPUs and
the resources that place the workers), so it runs where the training will, and the scores come
back through Ray: a driver on a CPU head never loads the weights.

**How.** The whole model in one forward pass per calibration batch, or one block at a time
(`raylsl.selectors.streaming`) for the selectors that can (CKA, activation): ``calibration.stream``
says which; ``auto`` streams when the model's weights at the scoring dtype take more than
`STREAM_ABOVE` of the device's usable memory. Both give the same scores.

**Cache.** Scores are keyed by what the model is (`weights_key`: its checkpoint's content, or the
random weights' recipe), the calibration data and the options, and kept in the run's storage
(`raylsl.selectors.runner.score_cache`), where every node and later runs and sweeps find them.
"""

from __future__ import annotations

import hashlib
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from raylsl.cluster import only_this_node, ray_running, worker_resources
from raylsl.config import RunConfig
from raylsl.data import TaskSplits
from raylsl.errors import RaylslError
from raylsl.fit import local_device_memory
from raylsl.models import ModelSpec, find_blocks
from raylsl.models.loading import RANDOM_SEED, LoadOptions, load_options
from raylsl.models.memory import weight_bytes
from raylsl.models.registry import model_class
from raylsl.models.weights import CheckpointWeights, checkpoint_fingerprint
from raylsl.selectors import Budget, Selection, Selector, build_selector, select_blocks
from raylsl.selectors.runner import score_cache
from raylsl.selectors.streaming import BlockStream, skeleton

STREAM_ABOVE = 0.75
"""``calibration.stream=auto`` streams when the weights take more than this share of the scoring
device's usable memory (the rest is for a calibration batch's activations)."""


def local_device() -> torch.device:
    """This machine's accelerator (where this process scores blocks and a single-process run trains)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(spec: ModelSpec, config: RunConfig, device: torch.device,
              sharded: bool = False) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)`` loaded as the run's ``model.*`` settings say, decided for ``device``
    (the dtype, quantization and kernel this process can run), on ``device``."""
    return spec.load(load_options(config.model, device, config.train.precision, sharded))


def scores_elsewhere() -> bool:
    """True when this process uses Ray on a cluster of more than its own node: a Ray task scores."""
    return ray_running() and not only_this_node()


def score_here(config: RunConfig, source, kind: str, task: TaskSplits, keep: bool = False,
               exclude: tuple[int, ...] = ()) -> tuple[Selection, tuple[torch.nn.Module, Any] | None]:
    """Scores in this process, on its accelerator: whole or one block at a time (`streams`),
    never choosing the ``exclude`` blocks (`raylsl.models.vision.unread_blocks`)."""
    from raylsl.objective import run_objective

    selector = build_selector(config.selector, config.selector_options.get(config.selector))
    device = local_device()
    spec = source.spec(kind)
    options = load_options(config.model, device, config.train.precision)
    streamed = streams(config, selector, spec, options)
    loaded = stream = None
    if streamed:
        stream = open_stream(spec, options, config.blocks_path)
        model, tokenizer = stream.model, spec.tokenizer(random=options.weights == "random")
    else:
        loaded = spec.load(options)
        model, tokenizer = loaded
    blocks_path, blocks = find_blocks(model, config.blocks_path)
    selection = select_blocks(
        model, blocks, run_objective(kind, tokenizer, config, task.generative), task.train, selector,
        Budget(config.n, config.threshold, config.mass), config.calibration, config.lora.target_modules,
        config.data.max_length, validation=task.validation, blocks_path=blocks_path, lora=config.lora,
        train_settings=config.train, model_key=weights_key(spec, options, streamed), stream=stream,
        cache=score_cache(config.storage), use_cache=config.score_cache, exclude=exclude)
    placement = {"host": socket.gethostname(), "device": str(device), "streamed": streamed}
    return replace(selection, placement=placement), loaded if keep else None


def score_in_ray(config: RunConfig, source, kind: str, task: TaskSplits, exclude: tuple[int, ...] = ()) -> Selection:
    """`score_here` in a Ray task placed as one training worker is; the scores come back.

    Raises:
        RaylslError: what the task raised on input the user can fix.
    """
    import ray

    resources = worker_resources(config)
    task_options = {"num_cpus": resources.pop("CPU"), "num_gpus": resources.pop("GPU", 0), "resources": resources}
    try:
        return ray.get(ray.remote(_score_task).options(**task_options).remote(config, source, kind, task, exclude))
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RaylslError):
            raise exc.cause from None
        raise


def _score_task(config: RunConfig, source, kind: str, task: TaskSplits, exclude: tuple[int, ...]) -> Selection:
    import ray

    selection, _ = score_here(config, source, kind, task, exclude=exclude)
    return replace(selection, placement={**selection.placement, "ray_node": ray.get_runtime_context().get_node_id()})


def streams(config: RunConfig, selector: Selector, spec: ModelSpec, options: LoadOptions) -> bool:
    """Whether to score one block at a time here (``calibration.stream``; see `STREAM_ABOVE`)."""
    setting = config.calibration.stream
    if setting == "off" or not selector.streams:
        return False
    if setting == "on":
        return True
    whole = weight_bytes(spec.skeleton(), options.dtype, options.quantization)
    return whole > STREAM_ABOVE * local_device_memory().usable


def open_stream(spec: ModelSpec, options: LoadOptions, blocks_path: str | None = None) -> BlockStream:
    """A `BlockStream` over ``spec``'s model: its checkpoint, or random weights."""
    config = spec.config()
    model = skeleton(model_class(spec.kind, config), config, options, spec.name)
    weights = None if options.weights == "random" else CheckpointWeights(local_files(spec), model.base_model_prefix)
    return BlockStream(model, blocks_path, weights, options.device, options.dtype)


def weights_key(spec: ModelSpec, options: LoadOptions, streamed: bool) -> str:
    """What the scored model is, without loading it: its checkpoint's content
    (`raylsl.models.weights.checkpoint_fingerprint`; a hub id's commit), or for random weights
    their recipe (the config, seed and device; a streamed random model is another one, see
    `raylsl.selectors.streaming`), with the kind, dtype and quantization scored at (streaming
    scores each block unquantized)."""
    parts: dict[str, Any] = {"kind": spec.kind, "dtype": str(options.dtype),
                             "quantization": "none" if streamed else options.quantization}
    if options.weights == "random":
        config = {k: v for k, v in spec.config().to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        parts.update(config=config, seed=RANDOM_SEED, device=options.device.type, blockwise=streamed)
    elif Path(spec.directory()).is_dir():
        parts["checkpoint"] = checkpoint_fingerprint(spec.directory())
    else:  # a hub id: its snapshot's directory is named by the commit, which fixes every file
        parts["checkpoint"] = f"{spec.directory()}@{_hub_snapshot(spec.directory(), ['config.json']).name}"
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def local_files(spec: ModelSpec) -> Path:
    """The directory of ``spec``'s config and safetensors on this node (for a hub id, its
    snapshot in the hub's cache: those files only, not the other formats a repository may hold)."""
    path = Path(spec.directory())
    return path if path.is_dir() else _hub_snapshot(spec.directory(), ["*.json", "*.safetensors"])


def _hub_snapshot(repo: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=patterns))
