"""A 3-objective sweep end to end on the tiny model: the costs reach Tune, the scheduler's rungs,
the Optuna study and the report; ``raylsl report --objectives`` re-cuts it without training and
the Python API returns the same front; ``raylsl recommend --cost`` reads it."""

import json
import math

import pytest

from tests.conftest import tiny_sweep

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray.tune")

SPACE = """\
base: {base}
set: {{data.val_size: 16, data.test_size: 16, train.steps: 4, train.batch_size: 4, eval_before: false}}
trials: 3
objectives: [val_acc: max, peak_memory: min, step_time: min]
scheduler: pareto_halving
eta: 2
rungs: 1
points:
  - {{selector: last, n: 1}}
parameters:
  selector: {{choices: [all, first, last]}}
  n: {{low: 1, high: 3}}
"""
GOALS = ["val_acc", "peak_memory", "step_time"]


@pytest.fixture(scope="module")
def costed(tmp_path_factory, ray_session):
    return tiny_sweep(tmp_path_factory.mktemp("costs"), SPACE, "c")


def test_costs_are_recorded_for_every_trial_and_reach_tune(costed):
    done = costed.trials[costed.trials["status"] == "TERMINATED"]
    assert len(done) >= 2 and list(costed.goals) == GOALS
    for column in ("peak_memory", "step_time", "tokens_per_second", "estimated_memory"):
        assert (done[column] > 0).all(), column
    # on a CPU: the weights plus the step's live tensor bytes, so at least the tiny model's weights
    assert (done["peak_memory"] > 10_000).all() and (done["step_time_spread"] >= 0).all()
    results = [json.loads(line) for path in (costed.run_dir / "tune").glob("*/result.json")
               for line in path.read_text().splitlines()]
    rung = [r for r in results if r.get("final") is False]
    assert rung and all(r["peak_memory"] > 0 and r["step_time"] > 0 for r in rung)  # the scheduler's input
    records = json.loads((costed.run_dir / "scheduler.json").read_text())["records"]
    assert all(len(v) == 4 for trials in records.values() for v in trials.values())  # 3 objectives + val loss


def test_the_optuna_study_is_over_exactly_the_three_objectives(costed):
    settings = json.loads((costed.run_dir / "sweep.json").read_text())
    assert settings["objectives"] == dict(zip(GOALS, ["max", "min", "min"]))
    study = optuna.load_study(study_name=settings["study_name"], storage=f"sqlite:///{costed.run_dir / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    told = {tuple(t.values) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    done = costed.trials[costed.trials["status"] == "TERMINATED"]
    assert told == {tuple(map(float, row)) for row in done[GOALS].to_numpy()}


def test_the_report_shows_every_objective(costed):
    md = (costed.run_dir / "pareto.md").read_text()
    assert "minimise memory, minimise step time" in md and "peak memory (MiB) | step time (s)" in md


def test_report_objectives_recuts_the_finished_sweep_and_the_api_agrees(costed, capsys):
    import pandas as pd

    import raylsl
    from raylsl.cli import main
    from raylsl.report import pareto_mask

    assert main(["report", str(costed.run_dir), "--objectives", "val_acc,peak_memory", "--no-test"]) == 0
    out = capsys.readouterr().out
    assert "peak memory (MiB) | val acc" in out and "step time (s)" not in out.split("\n\n")[1]
    csv = pd.read_csv(costed.run_dir / "pareto.csv")
    done = costed.trials[costed.trials["status"] == "TERMINATED"]
    expected = set(done[pareto_mask(done[["val_acc", "peak_memory"]].to_numpy(float), ["max", "min"])]["trial_id"])
    assert set(csv[csv["pareto"]]["trial_id"]) == expected
    api = raylsl.sweep_report(str(costed.run_dir), objectives="val_acc,peak_memory")
    assert set(api.pareto_front()["trial_id"]) == expected and list(api.goals) == ["val_acc", "peak_memory"]
    assert main(["report", str(costed.run_dir), "--objectives", "val_acc,gpu_hours", "--no-test"]) == 2
    assert "unknown objective 'gpu_hours'" in capsys.readouterr().err


def test_recommend_by_memory_from_the_command_line(costed, capsys):
    from raylsl.cli import main

    assert main(["recommend", str(costed.run_dir), "--cost", "peak_memory", "--eps", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    if found["trial_id"] is not None:  # with eps 1 the least memory wins, whatever its accuracy
        done = costed.trials[costed.trials["status"] == "TERMINATED"]
        assert found["peak_memory"] == done["peak_memory"].min()
        assert found["text"].startswith("Recommended by memory") and "x memory" in found["text"]
    assert math.isfinite(found["baseline_val"])
