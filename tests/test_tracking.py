"""tracking=tensorboard, read back with TensorBoard's own event reader."""

import json
from pathlib import Path

import pytest

from raylsl.errors import ConfigError
from raylsl.recipes import train as recipe

pytest.importorskip("tensorboard")


def _accumulator(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every event of ``tag`` in ``log_dir`` (none when the tag was never logged)."""
    acc = _accumulator(log_dir)
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def test_a_run_logs_steps_evaluations_blocks_and_final_metrics(tiny_config):
    results = recipe.train(tiny_config(tracking="tensorboard", layers="1-2"), progress=False)
    run = Path(results["run_dir"])
    log_dir = run / "tensorboard"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss", "lr", "step_time_s"):
        logged = scalars(log_dir, f"train/{name}")
        assert [s for s, _ in logged] == [m["step"] for m in steps] == list(range(1, 7))
        assert [v for _, v in logged] == pytest.approx([m[name] for m in steps], rel=1e-6)
    assert scalars(log_dir, "eval_before/acc") == [(0, pytest.approx(results["before"]["acc"]))]
    assert scalars(log_dir, "eval_after_test/acc") == [(6, pytest.approx(results["after"]["acc"]))]
    assert scalars(log_dir, "eval_after_test/loss")[0][1] == pytest.approx(results["after"]["loss"], rel=1e-6)
    assert scalars(log_dir, "final/peak_memory_mb")[0][1] == pytest.approx(results["train"]["peak_memory_mb"])
    tags = _accumulator(log_dir).Tags()["tensors"]  # text entries are stored as tensors
    assert "run/blocks/text_summary" in tags and "run/config/text_summary" in tags
    blocks = _accumulator(log_dir).Tensors("run/blocks/text_summary")[0].tensor_proto.string_val[0].decode()
    assert blocks == "2 of 4: 1, 2"


def test_no_tracking_writes_nothing(tiny_config):
    results = recipe.train(tiny_config(train__steps=2), progress=False)
    assert not (Path(results["run_dir"]) / "tensorboard").exists()


def test_an_unknown_tracker_is_one_error(tiny_config):
    with pytest.raises(ConfigError, match="tracking.*none or tensorboard"):
        tiny_config(tracking="wandb")
