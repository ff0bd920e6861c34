"""The pieces a real cluster depends on, checked without one: resource requests, the device of
collectives, the node cache under concurrent first use, checkpoints that cannot run code, atomic
records, and score-cache keys that do not depend on where a model sits."""

from __future__ import annotations

import multiprocessing
import pickle
import time
from pathlib import Path

import pytest
import torch

from raylsl.config import load_config


def test_gpus_per_worker_is_asked_for_even_from_a_cpu_only_driver(monkeypatch):
    pytest.importorskip("ray")
    from raylsl.distributed import ray_train

    config = load_config(None, {"model": "tiny-llama", "workers": 4, "gpus_per_worker": 1, "cpus_per_worker": 2,
                                "worker_resources": {"accelerator_type:A10G": 0.001}})
    scaling = ray_train.scaling_config(config)
    assert not torch.cuda.is_available()  # this machine, like a CPU head
    assert scaling.num_workers == 4 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 2.0, "GPU": 1.0, "accelerator_type:A10G": 0.001}


@pytest.mark.parametrize("cluster_gpus, expected", [(0, 0.0), (8, 1.0)])
def test_auto_gpus_per_worker_follows_the_cluster(monkeypatch, cluster_gpus, expected):
    ray = pytest.importorskip("ray")
    from raylsl.cluster import gpus_per_worker

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": float(cluster_gpus)})
    assert gpus_per_worker(load_config(None, {"workers": 2})) == expected


@pytest.mark.parametrize("settings, cluster, nodes, expected", [
    ({"workers_per_trial": 2, "concurrency": 4}, {"CPU": 64, "GPU": 8}, [{"CPU": 8, "GPU": 1}] * 8, {"cpu": 0.5}),
    ({"workers_per_trial": 0, "concurrency": 1}, {"CPU": 66}, [{"CPU": 2}, {"CPU": 32}, {"CPU": 32}], {"cpu": 32}),
    ({"workers_per_trial": 0, "concurrency": 4}, {"CPU": 16, "GPU": 4}, [{"CPU": 4, "GPU": 1}] * 4,
     {"cpu": 4, "gpu": 1}),
    ({"workers_per_trial": 0, "concurrency": 2, "gpus_per_trial": 0, "cpus_per_trial": 3}, {"CPU": 8, "GPU": 2},
     [{"CPU": 8, "GPU": 2}], {"cpu": 3}),
])
def test_trial_resources_never_exceed_a_node(settings, cluster, nodes, expected):
    pytest.importorskip("ray.tune")
    from raylsl.sweep.run import trial_resources

    request = trial_resources(settings, cluster, nodes)
    assert request == expected
    assert request["cpu"] <= max(n["CPU"] for n in nodes)


def test_broadcasts_use_the_process_groups_device(monkeypatch):
    import torch.distributed as dist

    from raylsl.selectors import dynamic

    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert dynamic.collective_device() == torch.device("cuda", 3)  # NCCL cannot move CPU tensors
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert dynamic.collective_device() == torch.device("cpu")

    seen = []
    monkeypatch.setattr(dynamic, "_distributed", lambda: True)
    monkeypatch.setattr(dynamic, "collective_device", lambda: torch.device("meta"))
    monkeypatch.setattr(dist, "broadcast", lambda tensor, src: seen.append((tensor.device, src)))
    with pytest.raises(NotImplementedError):  # copying back from "meta" (the stand-in GPU) fails
        dynamic.broadcast_from_rank0(torch.tensor([1, 0, 1]))
    assert seen == [(torch.device("meta"), 0)]


def _build_once(cache: str, log: str, results) -> None:
    import os

    os.environ["RAYLSL_CACHE"] = cache
    from raylsl.fetch import cached_directory

    def build(target: Path) -> None:
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(1.0)  # a slow conversion: the other process must wait, not build too
        (target / "model.safetensors").write_text("weights")

    path = cached_directory("models/slow", build, ready="model.safetensors")
    results.put((path / "model.safetensors").read_text())


def test_concurrent_first_use_of_a_cached_model_builds_it_once(tmp_path):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_build_once, args=(str(tmp_path / "cache"), str(log), results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert log.read_text() == "built\n" and [results.get(), results.get()] == ["weights", "weights"]
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")] == ["slow"]


class _Payload:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    from raylsl.training.checkpoint import read_trainer_state

    torch.save({"step": 3, "callbacks": [], "extra": {"x": _Payload()}}, tmp_path / "trainer_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_trainer_state(tmp_path)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    import random

    import numpy as np

    from raylsl.training.checkpoint import rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(2), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(2), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_a_torn_metrics_line_does_not_block_a_resume(tmp_path):
    from raylsl.training.loop import _MetricsLog

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # crashed mid-write
    log = _MetricsLog(path, resumed_step=2)
    log.write({"step": 3, "loss": 1.2})
    assert [line for line in path.read_text().splitlines()] == [
        '{"step": 1, "loss": 2.0}', '{"step": 2, "loss": 1.5}', '{"step": 3, "loss": 1.2}']


def test_score_cache_key_does_not_depend_on_where_the_model_is(tmp_path):
    from raylsl.models import resolve_model
    from raylsl.selectors.runner import model_fingerprint

    model, tok = resolve_model("tiny-llama").load()
    for name in ("a", "b"):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    first, _ = resolve_model(str(tmp_path / "a")).load()
    second, _ = resolve_model(str(tmp_path / "b")).load()
    assert first.config._name_or_path != second.config._name_or_path
    assert model_fingerprint(first) == model_fingerprint(second) == model_fingerprint(model)


def test_a_worker_of_rank_1_builds_a_complete_model_cache(tmp_path, monkeypatch):
    """transformers' save_pretrained writes weights on torch.distributed rank 0 only; a node's
    cache is built by whichever worker comes first, rank 1 included."""
    from transformers.distributed import mixin

    from raylsl.models import resolve_model

    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path))
    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    model, _ = resolve_model("tiny-llama").load()
    assert (tmp_path / "models" / "tiny-llama" / "model.safetensors").is_file() and model.config.model_type == "llama"
