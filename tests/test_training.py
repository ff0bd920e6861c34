import json
from pathlib import Path

import pytest
import torch

from raylsl.config import LoraSettings
from raylsl.data import load_task
from raylsl.lora import apply_lora
from raylsl.models import find_blocks, resolve_model
from raylsl.objective import make_objective
from raylsl.recipes import train as recipe
from raylsl.recipes.evaluate import evaluate_target
from raylsl.training import loop as loop_module
from raylsl.training import session
from raylsl.training.checkpoint import LocalCheckpoints
from raylsl.callbacks import Callback
from raylsl.data import micro_batches
from raylsl.assemble import seed_everything
from raylsl.training.loop import train_loop


class Interrupt(Exception):
    pass


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_start(self, state):
        if state.step == self.step:
            raise Interrupt


def _setup(config):
    model, tok = resolve_model(config.model.name).load()
    path, blocks = find_blocks(model)
    seed_everything(config.train.seed)
    model = apply_lora(model, [1, 2], config.lora, path, blocks, "decoder")
    task = load_task(config.task, config.data)
    return model, make_objective("decoder", tok, config.data.max_length), task


def _adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_training_lowers_the_loss(tiny_config, tmp_path):
    config = tiny_config(train__steps=30, train__lr=1e-2, train__checkpoint_every=0)
    model, objective, task = _setup(config)
    batch = objective.batch(task.train[:64])
    with torch.no_grad():
        before = float(objective.loss(model, batch))
    train_loop(model, objective, task.train, config.train, tmp_path, progress=False)
    with torch.no_grad():
        after = float(objective.loss(model, batch))
    assert after < 0.5 * before
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 31))


def test_resume_matches_an_uninterrupted_run(tiny_config, tmp_path):
    # Dropout > 0 and weight decay: resume must restore RNG and optimizer state, not only weights.
    config = tiny_config(lora__dropout=0.2, train__weight_decay=0.1, train__steps=6, train__checkpoint_every=2)
    straight, objective, task = _setup(config)
    train_loop(straight, objective, task.train, config.train, tmp_path / "a", progress=False)

    resumed, _, _ = _setup(config)
    with pytest.raises(Interrupt):
        train_loop(resumed, objective, task.train, config.train, tmp_path / "b", (StopAt(3),), progress=False)
    assert [p.name for p in LocalCheckpoints(tmp_path / "b").list()] == ["step-000002"]
    fresh, _, _ = _setup(config)  # a new process would start from a fresh model
    out = train_loop(fresh, objective, task.train, config.train, tmp_path / "b", progress=False)
    assert out["resumed_from"] == 2 and out["steps"] == 6
    a, b = _adapter_state(straight), _adapter_state(fresh)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_micro_batches_cover_each_epoch_once():
    from raylsl.config import TrainSettings

    settings = TrainSettings(batch_size=4, grad_accum=2, seed=1)
    seen = [i for step in range(5) for chunk in micro_batches(40, step, settings) for i in chunk]
    assert sorted(seen) == list(range(40))
    assert micro_batches(40, 3, settings) == micro_batches(40, 3, settings)
    assert all(len(c) == 4 for c in micro_batches(40, 7, settings))  # wraps into epoch 2


def test_micro_batches_shard_the_same_global_batch_across_ranks():
    from raylsl.config import TrainSettings

    one = micro_batches(50, 3, TrainSettings(batch_size=8, grad_accum=2, seed=2))
    two = [micro_batches(50, 3, TrainSettings(batch_size=4, grad_accum=2, seed=2), rank, 2) for rank in (0, 1)]
    for m in range(2):
        assert sorted(one[m]) == sorted(two[0][m] + two[1][m]) and not set(two[0][m]) & set(two[1][m])


def test_recipe_writes_run_and_adapter_reloads_identically(tiny_config):
    # a name with the characters a file:// URI must escape (a run named so once failed with a storage error)
    config = tiny_config(layers="1-2", name="first 25%#1")
    results = recipe.train(config, progress=False)
    run_dir = results["run_dir"]
    assert results["adapted_blocks"] == [1, 2]
    assert json.loads(open(f"{run_dir}/run.json").read())["status"] == "complete"
    assert results["params"]["adapter"] == 512 * 8 * 2
    reloaded = evaluate_target(run_dir, [])
    assert reloaded["acc"] == results["after"]["acc"] and reloaded["acc_norm"] == results["after"]["acc_norm"]

    from peft import PeftConfig

    saved = PeftConfig.from_pretrained(f"{run_dir}/adapter")
    assert list(saved.layers_to_transform) == [1, 2] and saved.r == 8


def _train_crashing_at_step_3(config, monkeypatch) -> None:
    """Runs ``config`` until step 3 raises `Interrupt` (after the step-2 checkpoint), then restores
    the real loop, as a crashed run leaves things."""
    original = loop_module.train_loop

    def crashing(*args, callbacks=(), **kwargs):
        return original(*args, callbacks=callbacks + (StopAt(3),), **kwargs)

    monkeypatch.setattr(session, "train_loop", crashing)
    with pytest.raises(Interrupt):
        recipe.train(config, progress=False)
    monkeypatch.setattr(session, "train_loop", original)


def test_recipe_resume_after_failure(tiny_config, monkeypatch):
    config = tiny_config(name="crash", train__steps=4, train__checkpoint_every=2)
    _train_crashing_at_step_3(config, monkeypatch)
    run_dir = config.output_dir + "/crash"
    status = json.loads(open(f"{run_dir}/run.json").read())
    assert status["status"] == "failed" and "Interrupt" in status["error"]
    assert not (tmp := Path(run_dir, "results.json")).exists()
    results = recipe.resume(run_dir, progress=False)
    assert results["train"]["resumed_from"] == 2 and results["train"]["steps"] == 4 and tmp.exists()


def test_encoder_run_trains_head_and_adapters(tiny_config):
    results = recipe.train(tiny_config(model="tiny-bert", layers="0,3", name="enc"), progress=False)
    assert results["adapted_blocks"] == [0, 3]
    assert results["params"]["head"] == 33 and set(results["after"]) == {"acc", "loss", "perplexity", "n"}
    assert evaluate_target(results["run_dir"], [])["acc"] == results["after"]["acc"]


def test_resume_from_the_storage_uri_alone(tiny_config, monkeypatch, tmp_path):
    """`raylsl train --resume s3://...` on a machine without the run directory (here: deleted)."""
    import shutil

    from tests.distributed.two_node import S3Server

    s3 = S3Server(tmp_path)
    try:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        config = tiny_config(name="s3crash", train__steps=4, train__checkpoint_every=2, storage="s3://raylsl/runs")
        _train_crashing_at_step_3(config, monkeypatch)
        shutil.rmtree(f"{config.output_dir}/s3crash")  # nothing local is left: only the bucket has the run
        results = recipe.resume("s3://raylsl/runs/s3crash", progress=False)
        assert results["train"]["resumed_from"] == 2 and results["train"]["steps"] == 4
        keys = s3.keys("runs/s3crash/")
        assert "runs/s3crash/results.json" in keys and "runs/s3crash/adapter/adapter_model.safetensors" in keys
        assert json.loads(s3.client().get_object(Bucket="raylsl", Key="runs/s3crash/run.json")["Body"].read())[
            "status"] == "complete"
    finally:
        s3.stop()


def _crash_at_step_5(config, monkeypatch) -> Path:
    """Runs ``config`` (6 steps, checkpoints every 2) until step 5 raises, after the step-4
    checkpoint; returns the run directory."""
    original = loop_module.train_loop
    monkeypatch.setattr(session, "train_loop",
                        lambda *a, callbacks=(), **k: original(*a, callbacks=callbacks + (StopAt(5),), **k))
    with pytest.raises(Interrupt):
        recipe.train(config, progress=False)
    monkeypatch.setattr(session, "train_loop", original)
    return Path(config.output_dir, config.name)


def test_a_torn_stored_checkpoint_never_replaces_the_complete_local_one(tiny_config, monkeypatch, tmp_path):
    """The issue's reproduction: two files gone from the stored newest checkpoint. The resume
    finishes from the complete local step 4, which stays as it was."""
    config = tiny_config(name="torn", train__steps=6, train__checkpoint_every=2, storage=str(tmp_path / "store"))
    run_dir = _crash_at_step_5(config, monkeypatch)
    stored = tmp_path / "store" / "torn" / "checkpoints" / "step-000004"
    for name in ("optimizer.pt", "adapter/adapter_model.safetensors"):
        (stored / name).unlink()
    def local():
        return {p.name: p.read_bytes() for p in (run_dir / "checkpoints" / "step-000004").rglob("*") if p.is_file()}

    before = local()
    results = recipe.resume(run_dir, progress=False)
    assert results["train"]["resumed_from"] == 4 and results["train"]["steps"] == 6
    assert local() == before
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_an_upload_cut_off_leaves_a_copy_no_resume_reads(tiny_config, monkeypatch, tmp_path):
    """Storage that fails half way through the step-4 upload (its optimizer file cut short): the
    stored copy has no completion marker, and a resume from storage alone takes step 2."""
    import shutil

    from raylsl.storage import Storage, StorageError

    real_write = Storage.write_bytes

    def cut_off(self, rel, data):
        if rel == "checkpoints/step-000004/optimizer.pt":
            real_write(self, rel, data[: len(data) // 2])
            raise StorageError(f"cannot write storage {self.uri}: connection reset")
        real_write(self, rel, data)

    monkeypatch.setattr(Storage, "write_bytes", cut_off)
    config = tiny_config(name="cut", train__steps=6, train__checkpoint_every=2, storage=str(tmp_path / "store"))
    with pytest.raises(StorageError, match="connection reset"):
        recipe.train(config, progress=False)
    monkeypatch.setattr(Storage, "write_bytes", real_write)
    stored = tmp_path / "store" / "cut" / "checkpoints"
    assert (stored / "step-000004" / "optimizer.pt").is_file()
    assert not (stored / "step-000004" / "COMPLETE.json").exists()
    assert (stored / "step-000002" / "COMPLETE.json").is_file()  # kept until a newer one is complete there
    shutil.rmtree(tmp_path / "runs" / "cut" / "checkpoints")  # another machine: only storage has the run
    results = recipe.resume(tmp_path / "runs" / "cut", progress=False)
    assert results["train"]["resumed_from"] == 2 and results["train"]["steps"] == 6
    assert (stored / "step-000006" / "COMPLETE.json").is_file()  # the new checkpoint reached storage whole


def test_a_resume_falls_back_to_an_older_checkpoint_when_the_newest_cannot_be_read(tiny_config, monkeypatch, capsys):
    run_dir = _crash_at_step_5(tiny_config(name="rot", train__steps=6, train__checkpoint_every=2), monkeypatch)
    newest = run_dir / "checkpoints" / "step-000004" / "optimizer.pt"
    newest.write_bytes(b"\0" * newest.stat().st_size)  # complete on paper (same size), unreadable
    results = recipe.resume(run_dir, progress=False)
    assert results["train"]["resumed_from"] == 2 and results["train"]["steps"] == 6
    assert "step-000004 cannot be read" in capsys.readouterr().err
