"""A sweep with Pareto halving, end to end on the tiny model: a dominated trial is stopped at its
rung, recorded as STOPPED_EARLY, kept off the front and pruned in the Optuna study.

The space makes the decisions certain: at a learning rate of 1e-12 no trial's predictions move
from the base model's in 2 steps, so every trial has the same validation accuracy at the rung and
the trial with more parameters than half of those already at the rung is dominated. Trials run
one at a time in the order of ``points``, after the all-block baseline.
"""

import json
import math

import pytest

from tests.conftest import tiny_sweep

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray.tune")

SPACE = """\
base: {base}
set: {{data.val_size: 16, data.test_size: 16, train.steps: 4, train.batch_size: 4, train.lr: 1.0e-12,
       eval_before: false, tracking: mlflow}}
trials: 4
scheduler: pareto_halving
eta: 2
rungs: 1
points:
  - {{selector: last, n: 1, lora.r: 2}}
  - {{selector: last, n: 2, lora.r: 2}}
  - {{selector: last, n: 3, lora.r: 4}}
parameters:
  selector: {{choices: [all, last]}}
  n: {{low: 1, high: 3}}
  lora.r: {{choices: [2, 4]}}
"""


@pytest.fixture(scope="module")
def halved(tmp_path_factory, ray_session):
    return tiny_sweep(tmp_path_factory.mktemp("halving"), SPACE, "h")


def _row(report, selector, n, rank):
    trials = report.trials
    found = trials[(trials["selector"] == selector) & (trials["rank"] == rank)
                   & ((trials["n"] == n) if n is not None else trials["n"].isna())]
    assert len(found) == 1, report.trials[["selector", "n", "rank", "status"]]
    return found.iloc[0]


def test_the_dominated_trial_is_stopped_at_its_rung_and_recorded(halved):
    # At step 2 (the rung, 1/2 of 4 steps) every trial has the base model's accuracy, so fewer
    # parameters dominate. The baseline (all blocks, r=4) runs first and never stops; last-1 r=2
    # and last-2 r=2 are within the best ceil(k/2) of the k trials at the rung; last-3 r=4 is the
    # 4th, behind last-1 and last-2: stopped.
    statuses = halved.trials.set_index("selector")["status"]
    assert halved.complete and len(halved.trials) == 4, halved.trials[["selector", "n", "rank", "status", "error"]]
    stopped = _row(halved, "last", 3, 4)
    assert stopped["status"] == "STOPPED_EARLY", statuses
    for selector, n, rank in (("all", None, 4), ("last", 1, 2), ("last", 2, 2)):
        assert _row(halved, selector, n, rank)["status"] == "TERMINATED"
    # its metrics are the rung's: the accuracy every trial had there, and its parameter count
    curve = json.loads(stopped["curve"])
    assert [step for step, _ in curve] == [2] and curve[0][1] == stopped["val_acc"]
    assert stopped["trainable_params"] > _row(halved, "last", 2, 2)["trainable_params"]
    assert stopped["checkpoint"] == "" and math.isnan(stopped["test_acc"])
    # a finished trial's curve has its rung evaluation and its final one
    finished = json.loads(_row(halved, "last", 1, 2)["curve"])
    assert [step for step, _ in finished] == [2, 4]


def test_the_stopped_trial_is_off_the_front_and_pruned_in_the_study(halved):
    stopped = _row(halved, "last", 3, 4)
    assert stopped["trial_id"] not in set(halved.pareto_front()["trial_id"])
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{halved.run_dir / 'optuna.db'}")
    states = {json.dumps(t.params, sort_keys=True): t.state for t in study.trials}
    pruned = [k for k, state in states.items() if state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == 1 and json.loads(pruned[0]) == {"selector": "last", "n": 3, "lora.r": 4}
    assert sum(state == optuna.trial.TrialState.COMPLETE for state in states.values()) == 3
    record = json.loads((halved.run_dir / "scheduler.json").read_text())
    assert record["stopped"] == {stopped["trial_id"]: "0.5"} and len(record["records"]["0.5"]) == 4
    assert "1 of them stopped early by the scheduler" in (halved.run_dir / "pareto.md").read_text()


def test_mlflow_has_one_run_per_trial_with_its_rung_and_final_reports(halved):
    pytest.importorskip("mlflow")
    from tests.test_tracking import mlflow_history, mlflow_runs

    uri = f"sqlite:///{halved.run_dir / 'mlflow' / 'mlflow.db'}"
    runs = mlflow_runs(uri, "h")  # the experiment is the sweep
    assert len(runs) == 4
    by_trial = {run.data.tags["trial_name"].split("_")[-1]: run for run in runs}
    for row in halved.trials.itertuples():
        run = by_trial[row.trial_id]
        accuracies = [v for _, v in mlflow_history(uri, run.info.run_id, "val_acc")]
        assert accuracies == pytest.approx([acc for _, acc in json.loads(row.curve)], abs=1e-6)
        assert run.data.params["selector"] == row.selector
