"""Shared fixtures: a synthetic multiple-choice task and small, fast run configs."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from raylsl.config import load_config

WARM = ["red", "orange", "yellow", "amber"]
COLD = ["blue", "green", "teal", "violet"]


def write_task(path: Path, n: int = 160, seed: int = 0) -> Path:
    """A learnable 2-way task: is the named colour warm?"""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            colour = rng.choice(WARM + COLD)
            row = {"context": f"Item {i} is {colour}. Warm colour? Answer:", "choices": ["no", "yes"],
                   "label": int(colour in WARM)}
            fh.write(json.dumps(row) + "\n")
    return path


def tiny_sweep(root: Path, space: str, name: str):
    """A sweep of tiny-llama (r=4) on the colour task in ``root``: ``space`` is the space file's
    text with ``{base}`` where the base config's path goes. Returns the sweep's report."""
    from raylsl.sweep.run import sweep

    task = write_task(root / "colours.jsonl")
    (root / "base.yaml").write_text(f"model: tiny-llama\ntask: {task}\nlora: {{r: 4}}\n")
    (root / "space.yaml").write_text(space.format(base=root / "base.yaml"))
    return sweep(root / "space.yaml", output_dir=root, name=name, progress=False)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    return write_task(tmp_path / "colours.jsonl")


@pytest.fixture
def tiny_config(tmp_path: Path, task_file: Path):
    """Factory for a tiny-llama run config on the synthetic task; overrides as keyword dotted keys."""

    def make(**overrides):
        base = {"model": "tiny-llama", "task.name": str(task_file), "output_dir": str(tmp_path / "runs"),
                "data.test_size": 32, "data.val_size": 16, "train.steps": 6, "train.batch_size": 8,
                "train.warmup_steps": 1, "train.checkpoint_every": 3, "train.lr": 5e-3,
                "train.eval_batch_size": 16}
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_config(None, base)

    return make


@pytest.fixture(scope="module")
def ray_session():
    """One fresh embedded Ray per test module: each TorchTrainer.fit or Tune run already costs
    seconds of start-up. ``address="local"`` never joins a head another test (or user) left running."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread(request):
    """Every default-suite test on one torch thread: its models are tiny, and extra threads only
    spin against each other and whatever else runs on a 2-core machine (steps measured 5-20x
    slower with two). The real-model tests (``slow``) keep torch's own count."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(count: int):
    """Torch's intra-op threads set to ``count`` inside the body. Tiny models compute fastest on
    one: extra threads only spin against each other and whatever else runs on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
