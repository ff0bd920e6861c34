import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raylsl.cli import main
from raylsl.errors import RaylslError


@pytest.mark.parametrize("args, message", [
    (["model=smollm-135m"], "unknown model 'smollm-135m'"),
    (["task=sarcsm"], "unknown task 'sarcsm'"),
    (["--layers", "9"], "block 9 is out of range; this model has 4 blocks"),
    (["--layers", ","], "selects no block"),
    (["lora.r=0"], "lora.r=0 must be a positive integer"),
    (["lora.rank=4"], "unknown key 'lora.rank'"),
    (["task=/no/such/file.jsonl"], "data file /no/such/file.jsonl does not exist"),
    (["blocks_path=model.norm"], "blocks_path 'model.norm' does not name"),
    (["selector=cak", "n=2"], "unknown selector 'cak'; available: activation, all, cka"),
    (["selector=cka"], "selector=cka needs a budget"),
    (["selector=cka", "n=9"], "n=9 exceeds the model's 4 blocks"),
    (["selector=cka", "n=1.5"], "n=1.5: a fraction of the blocks must be in (0, 1]"),
    (["selector=cka", "n=-1"], "n=-1 must be a positive block count"),
    (["selector=cka", "n=2", "--layers", "0-1"], "give either layers=0-1 or selector=cka"),
    (["cka.pooling=max"], "cka.pooling='max' must be last, cls or mean"),
    (["deepspeed=zero2"], "deepspeed='zero2' runs in Ray Train workers: set workers=1 or more"),
    (["workers=2", "deepspeed=zero9"], "deepspeed='zero9': use one of zero0, zero1, zero2, zero3"),
    (["workers=-1"], "workers=-1 must be >= 0"),
    (["selector=ist", "data.val_size=0"], "selector=ist probes on the validation slice held out of train; set data.val_size > 0"),
    (["gpus_per_worker=some"], "gpus_per_worker='some' must be auto or a number >= 0"),
    (["worker_resources={gpu_a10: 0}"], "worker_resources.gpu_a10=0 must be a number > 0"),
    (["storage=s3://bucket/x"], "cannot write storage s3://bucket/x: "),  # AWS_ENDPOINT_URL: a closed port
    (["storage=ftp://host/dir"], "storage=ftp://host/dir is not a storage URI Ray understands"),
])
def test_bad_input_is_one_clear_message(args, message, tmp_path, task_file, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    out_dir = tmp_path / "runs"
    base = ["train", "model=tiny-llama", f"task={task_file}", f"output_dir={out_dir}", "data.test_size=16",
            "data.val_size=8"]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("raylsl: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # nothing half-written


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"context": "a", "choices": ["x", "y"], "label": 0}\n\n{"context": "b", "choices": ["x", "y"]\n')
    assert main(["train", "model=tiny-llama", f"task={path}"]) == 2
    assert f"{path}:3: malformed JSON" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tiny_config, tmp_path, capsys):
    run = tmp_path / "runs" / "taken"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny-llama\n")
    code = main(["train", "model=tiny-llama", f"task={tmp_path / 'colours.jsonl'}", f"output_dir={tmp_path / 'runs'}",
                 "name=taken", "data.test_size=16", "data.val_size=8"])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "model: tiny-llama\n"


def test_eval_of_unfinished_run(tmp_path, capsys):
    run = tmp_path / "half"
    run.mkdir()
    assert main(["eval", str(run)]) == 2
    assert "holds no finished adapter" in capsys.readouterr().err


def test_select_command_prints_ranking_and_writes_files(tmp_path, task_file, capsys):
    code = main(["select", "--model", "tiny-llama", "--task", str(task_file), "--selector", "activation", "--n", "2",
                 "data.test_size=16", "data.val_size=8", f"output_dir={tmp_path}", "name=sel"])
    out = capsys.readouterr().out
    assert code == 0
    table = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(table) == 4 and out.count("*") == 2
    assert "chosen blocks:" in out and "selection time:" in out
    assert json.loads((tmp_path / "sel" / "scores.json").read_text())["scores"]["method"] == "activation"
    assert (tmp_path / "sel" / "scores.png").stat().st_size > 1000
    assert main(["select", "--model", "tiny-llama", f"task={task_file}", "data.test_size=16", "data.val_size=8"]) == 2
    assert "raylsl select needs a selector" in capsys.readouterr().err


def test_console_train_smoke_then_eval(tmp_path, task_file):
    """The real entry point in a subprocess: train --smoke, then eval the saved adapter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "raylsl", "train", "configs/tiny-smoke.yaml", f"task={task_file}",
                          "--smoke", f"output_dir={tmp_path}", "name=smoke", "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    assert "trainable parameters: 4,096" in out.stdout and "test acc:" in out.stdout
    results = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert results["train"]["steps"] == 4 and results["layers"] == [2, 3]
    ev = subprocess.run([sys.executable, "-m", "raylsl", "eval", str(tmp_path / "smoke")],
                        capture_output=True, text=True, env=env)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["acc"] == results["after"]["acc"]


@pytest.mark.parametrize("space, args, message", [
    ("parameters: {selector: {choices: [cka, cak]}, n: {low: 1, high: 2}}", [], "unknown selector 'cak'"),
    ("trails: 4\nparameters: {lora.r: {choices: [4]}}", [], "unknown key 'trails'"),
    ("parameters: {lora.r: {low: 8, high: 8}}", [], "empty range low=8 >= high=8"),
    ("parameters: {lora.r: {choices: [4]}}", ["lora.rank=4"], "unknown key 'lora.rank'"),
    ("parameters: {lora.r: {choices: [4]}}", ["--trials", "0"], "--trials=0 must be >= 1"),
    ("parameters: {lora.r: {choices: [4]}}", ["--scheduler", "asha"],
     "--scheduler: scheduler='asha'; choose one of none, pareto_halving"),
    ("parameters: {lora.r: {choices: [4]}}", ["tracking=wandb"], "tracking"),
    ("parameters: {lora.r: {choices: [4]}}", ["output_dir=elsewhere"], "disagree: give one"),
])
def test_bad_sweep_input_is_one_clear_message(space, args, message, tmp_path, capsys):
    pytest.importorskip("optuna")
    path = tmp_path / "space.yaml"
    path.write_text(space)
    out_dir = tmp_path / "sweeps"
    code = main(["sweep", str(path), "model=tiny-llama", "--output-dir", str(out_dir), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("raylsl: error: ") and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()  # nothing half-written


def test_an_output_dir_override_places_the_sweep_directory(tmp_path, monkeypatch):
    """``output_dir=DIR``, as every other command takes it, says where the sweep directory goes
    (it was passed to the trials, whose runs live in the sweep directory anyway, and ignored)."""
    pytest.importorskip("optuna")
    import raylsl.cli as cli
    import raylsl.sweep.run as run

    seen = {}
    monkeypatch.setattr(run, "sweep", lambda source, overrides, **kw: seen.update(overrides=overrides, **kw))
    monkeypatch.setattr(cli, "_print_report", lambda report: None)
    assert main(["sweep", "search_spaces/smoke.yaml", f"output_dir={tmp_path}", "lora.r=2"]) == 0
    assert seen["output_dir"] == str(tmp_path) and seen["overrides"] == {"lora.r": 2}
    assert main(["sweep", "search_spaces/smoke.yaml", "lora.r=2"]) == 0 and seen["output_dir"] == "runs"


def test_sweep_and_report_refuse_what_is_not_theirs(tmp_path, capsys):
    pytest.importorskip("optuna")
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert f"search space {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a raylsl sweep directory" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path)]) == 2
    assert "is not a raylsl sweep directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unreachable_ray_address_is_refused_within_seconds(command, tmp_path, task_file, capsys, monkeypatch):
    """Ray retries an address nothing answers at for minutes; raylsl checks it before it writes anything."""
    from tests.distributed.two_node import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("RAY_ADDRESS", address)
    out_dir = tmp_path / "runs"
    if command == "train":
        args = ["train", "model=tiny-llama", f"task={task_file}", f"output_dir={out_dir}", "workers=1"]
    else:
        pytest.importorskip("optuna")
        space = tmp_path / "space.yaml"
        space.write_text("parameters: {lora.r: {choices: [2, 4]}}\n")
        args = ["sweep", str(space), "model=tiny-llama", f"task={task_file}", "--output-dir", str(out_dir)]
    started = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 10
    assert err.startswith(f"raylsl: error: RAY_ADDRESS={address}: nothing answers")
    assert len(err.strip().splitlines()) == 1
    assert not out_dir.exists()


def test_no_cache_computes_scores_afresh_and_leaves_the_cache_alone(tmp_path, task_file, capsys, monkeypatch):
    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path / "cache"))
    args = ["select", "--model", "tiny-llama", "--task", str(task_file), "--selector", "activation", "--n", "2",
            "data.test_size=16", "data.val_size=8", f"output_dir={tmp_path}"]
    assert main([*args, "name=a", "--no-cache"]) == 0
    assert not (tmp_path / "cache" / "scores").exists()
    assert main([*args, "name=b"]) == 0 and len(list((tmp_path / "cache" / "scores").glob("*.json"))) == 1
    assert main([*args, "name=c", "--no-cache"]) == 0
    assert "(scores from cache)" not in capsys.readouterr().out.split("name=c")[-1]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_take_no_cache_into_their_config(command, tmp_path, monkeypatch):
    """What --no-cache sets reaches the run config (which the sweep's trials and a resume inherit)."""
    from raylsl.recipes import train as recipe

    seen = {}

    def stop(config, *args, **kwargs):
        seen["overrides"] = config if isinstance(config, dict) else {"score_cache": config.score_cache}
        raise RaylslError("stopped here")

    if command == "train":
        monkeypatch.setattr(recipe, "train", stop)
        args = ["train", "model=tiny-llama", "--no-cache"]
    else:
        pytest.importorskip("optuna")
        from raylsl.sweep import run

        monkeypatch.setattr(run, "sweep", lambda space, overrides, **kwargs: stop(overrides))
        args = ["sweep", str(tmp_path / "space.yaml"), "--no-cache"]
    assert main(args) == 2
    assert seen["overrides"]["score_cache"] is False


def _run_dir(tmp_path, tiny_config, **overrides) -> Path:
    """A run directory as `raylsl train` leaves it before its first checkpoint: its resolved
    config.yaml and run.json."""
    import yaml

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny_config(name="r", **overrides).to_dict(), sort_keys=False))
    (run / "run.json").write_text(json.dumps({"status": "failed", "layers": [0, 1, 2, 3]}))
    return run


@pytest.mark.parametrize("damage, args, message", [
    ("sweep.json", ["report", "{dir}"], "{dir}/sweep.json is damaged (not valid JSON: "),
    ("run.json", ["train", "--resume", "{dir}"], "{dir}/run.json is damaged (not valid JSON: "),
    ("config.yaml", ["train", "--resume", "{dir}"], "{dir}/config.yaml must hold a mapping of keys to values"),
])
def test_damaged_state_files_are_one_line_naming_the_file(damage, args, message, tmp_path, tiny_config, capsys):
    run = _run_dir(tmp_path, tiny_config)
    if damage == "sweep.json":
        (run / "sweep.json").write_text('{"trials": 4, "metric": "ac')  # cut short by a crash
    elif damage == "run.json":
        (run / "run.json").write_text('{"status": "fail')
    else:
        (run / "config.yaml").write_text("- model: tiny-llama\n")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main([a.format(dir=run) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raylsl: error: " + message.format(dir=run)) and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing half-written


def test_check_loads_what_a_command_would_and_runs_nothing(tmp_path):
    """`raylsl.cli.check` (what tests/test_docs.py runs on every command the docs show): the run
    config or search space, checked, with nothing started or written."""
    from raylsl.cli import check
    from raylsl.errors import ConfigError
    from raylsl.sweep.space import SearchSpace

    root = Path(__file__).resolve().parents[1]
    config = check(["train", str(root / "configs/sarcasm-smollm2.yaml"), "workers=2", "--smoke", "lora.r=4",
                    f"output_dir={tmp_path}"])
    assert (config.lora.r, config.workers, config.train.steps) == (4, 2, 4)
    assert isinstance(check(["sweep", str(root / "search_spaces/smoke.yaml"), "--smoke"]), SearchSpace)
    assert check(["export", "runs/x", "--format", "merged"]) is None and check(["eval", "runs/x"]) is None
    with pytest.raises(ConfigError, match="unknown key 'lora.rank'"):
        check(["select", "--selector", "cka", "--n", "2", "lora.rank=4"])
    with pytest.raises(SystemExit):
        check(["report"])  # RUN_DIR is required
    assert not any(tmp_path.iterdir())
