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
    results = recipe.train(tiny_config(tracking="tensorboard", layers="1-2", train__eval_every=2,
                                       train__eval_subset=8), progress=False)
    run = Path(results["run_dir"])
    log_dir = run / "tensorboard"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("loss", "lr", "step_time_s"):
        logged = scalars(log_dir, f"train/{name}")
        assert [s for s, _ in logged] == [m["step"] for m in steps] == list(range(1, 7))
        assert [v for _, v in logged] == pytest.approx([m[name] for m in steps], rel=1e-6)
    # evaluations during training: every 2 steps on the first 8 validation examples, not after the
    # last step (the evaluation after training is that one)
    evals = [m for m in steps if "val_acc" in m]
    assert [m["step"] for m in evals] == [2, 4] and all(m["val_n"] == 8 for m in evals)
    assert scalars(log_dir, "eval/acc") == [(m["step"], pytest.approx(m["val_acc"])) for m in evals]
    assert scalars(log_dir, "eval/loss") == [(m["step"], pytest.approx(m["val_loss"], rel=1e-6)) for m in evals]
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
    with pytest.raises(ConfigError, match="tracking.*none, tensorboard or mlflow"):
        tiny_config(tracking="wandb")


def mlflow_runs(uri: str, experiment: str) -> list:
    """Every run of ``experiment`` in the MLflow store at ``uri``, read with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id])


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_mlflow_logs_the_run_into_its_directory(tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's default mlruns/)
    config = tiny_config(tracking="mlflow", layers="1-2", train__eval_every=2)
    results = recipe.train(config, progress=False)
    run_dir = Path(results["run_dir"])
    uri = f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"
    (run,) = mlflow_runs(uri, "raylsl")
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.tags["raylsl.blocks"] == "2 of 4: 1, 2"
    assert run.data.params["lora.r"] == str(config.lora.r) and run.data.params["train.eval_every"] == "2"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = mlflow_history(uri, run.info.run_id, "train/loss")
    assert [s for s, _ in logged] == list(range(1, 7))
    assert [v for _, v in logged] == pytest.approx([m["loss"] for m in steps], rel=1e-6)
    evals = [m for m in steps if "val_acc" in m]
    assert mlflow_history(uri, run.info.run_id, "eval/acc") == [(m["step"], pytest.approx(m["val_acc"])) for m in evals]
    assert mlflow_history(uri, run.info.run_id, "eval_after_test/acc") == [(6, pytest.approx(results["after"]["acc"]))]
    assert mlflow_history(uri, run.info.run_id, "eval_before/acc") == [(0, pytest.approx(results["before"]["acc"]))]
    assert [p.name for p in tmp_path.iterdir() if p.name == "mlruns"] == []


def test_a_tracking_server_that_refuses_connections_does_not_stop_training(tiny_config, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    from raylsl.tracking import MLFLOW_PATIENCE
    from tests.distributed.two_node import free_port

    for name in MLFLOW_PATIENCE:  # what raylsl sets for MLflow's client is undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    config = tiny_config(tracking="mlflow", tracking_uri=f"http://127.0.0.1:{free_port()}", train__steps=2)
    results = recipe.train(config, progress=False)
    assert results["train"]["steps"] == 2
    assert json.loads((Path(results["run_dir"]) / "run.json").read_text())["status"] == "complete"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracking=mlflow failed" in line]
    assert len(warnings) == 1 and warnings[0].endswith("tracking is off for the rest of this run")


def test_a_tracker_that_fails_mid_run_warns_once_and_stops_tracking(tmp_path, capsys):
    from raylsl.callbacks import LoopState
    from raylsl.tracking import Tracker

    class Flaky(Tracker):
        kind = "flaky"
        calls = 0

        def _open(self, step):
            pass

        def _scalars(self, values, step):
            Flaky.calls += 1
            if step == 2:
                raise OSError("No space left on device")

    tracker = Flaky({"acc": 0.5})
    state = LoopState(None, None, None, tmp_path)
    tracker.on_train_start(state)
    for state.step in (1, 2, 3, 4):
        tracker.on_step_end(state, {"loss": 1.0})
    tracker.close()
    assert Flaky.calls == 3  # eval_before, steps 1 and 2; nothing after the failure
    err = capsys.readouterr().err
    assert err.count("tracking=flaky failed (No space left on device)") == 1


def test_tracking_records_travel_in_checkpoints_to_a_fresh_worker(tmp_path):
    """A restarted Ray Train worker starts in an empty directory: the checkpoint brings its
    TensorBoard events and MLflow store back; a directory that has its own keeps them."""
    from raylsl.training.checkpoint import read_checkpoint, write_checkpoint

    class Engine:  # the optimizer and adapter files are not what this test is about
        def save_adapter(self, path, rank):
            path.mkdir()

        save_state = load_adapter = load_state = lambda self, *args: None

    records = tmp_path / "attempt-1"
    (records / "tensorboard").mkdir(parents=True)
    (records / "tensorboard" / "events.out.tfevents.1").write_bytes(b"steps 1-3")
    (records / "mlflow").mkdir()
    (records / "mlflow" / "mlflow.db").write_bytes(b"runs")
    (records / "metrics.jsonl").write_text('{"step": 3}\n')
    write_checkpoint(tmp_path / "ckpt", 3, Engine(), records=records)
    fresh = tmp_path / "attempt-2"
    assert read_checkpoint(tmp_path / "ckpt", Engine(), records=fresh) == 3
    assert (fresh / "tensorboard" / "events.out.tfevents.1").read_bytes() == b"steps 1-3"
    assert (fresh / "mlflow" / "mlflow.db").read_bytes() == b"runs" and (fresh / "metrics.jsonl").is_file()
    (records / "mlflow" / "mlflow.db").write_bytes(b"runs and more")  # open in a live tracker: left alone
    read_checkpoint(tmp_path / "ckpt", Engine(), records=records)
    assert (records / "mlflow" / "mlflow.db").read_bytes() == b"runs and more"


def test_a_resumed_run_continues_its_mlflow_run(tiny_config, monkeypatch):
    pytest.importorskip("mlflow")
    from tests.test_training import _crash_at_step_5

    run_dir = _crash_at_step_5(tiny_config(name="mlcrash", tracking="mlflow", train__steps=6,
                                           train__checkpoint_every=2), monkeypatch)
    recipe.resume(run_dir, progress=False)
    uri = f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"
    (run,) = mlflow_runs(uri, "raylsl")  # one run, not one per attempt
    assert run.info.status == "FINISHED"
    # step 5 ran before the crash and again after the step-4 checkpoint (MLflow cannot unlog it)
    assert [s for s, _ in mlflow_history(uri, run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 5, 6]
    assert [s for s, _ in mlflow_history(uri, run.info.run_id, "eval_before/acc")] == [0]
