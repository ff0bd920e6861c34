"""Fronts over what training costs, without Ray: the objectives' validation, a 3-objective front
against Optuna's, Pareto halving over 3 objectives by hand, the recommendation by memory, and the
training loop's cost record."""

import json
import math

import numpy as np
import pytest

from raylsl.errors import ConfigError
from raylsl.report import objectives

# --- objectives -----------------------------------------------------------------------------------


def test_objectives_keep_the_metric_first_and_check_names_and_directions():
    assert objectives("acc") == {"val_acc": "max", "trainable_params": "min"}  # the default: unchanged
    chosen = [{"peak_memory": "min"}, {"val_acc": "max"}, {"step_time": "min"}]
    assert list(objectives("acc", chosen)) == ["val_acc", "peak_memory", "step_time"]
    assert objectives("acc", "val_acc,peak_memory") == {"val_acc": "max", "peak_memory": "min"}
    for bad, says in [([{"val_acc": "max"}, {"gpu_hours": "min"}], "unknown objective 'gpu_hours'"),
                      ([{"val_acc": "max"}, {"peak_memory": "down"}], "must be max or min"),
                      ([{"val_acc": "max"}, {"peak_memory": "max"}], "write peak_memory: min"),
                      ([{"val_acc": "max"}], "list 2 or 3"),
                      ([{"peak_memory": "min"}, {"step_time": "min"}], "val_acc among them"),
                      ("val_acc,peak_memory,step_time,trainable_params", "list 2 or 3")]:
        with pytest.raises(ConfigError, match=says) as caught:
            objectives("acc", bad)
        assert "\n" not in str(caught.value)


def test_a_bad_objective_in_the_space_file_is_one_line_and_exit_2(tmp_path, capsys):
    from raylsl.cli import main
    from raylsl.sweep.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text("objectives: [val_acc: max, peak_memory: min, step_time: min]\n"
                     "parameters:\n  selector: {choices: [all, last]}\n")
    assert load_space(space).objectives == {"val_acc": "max", "peak_memory": "min", "step_time": "min"}
    space.write_text("objectives: [val_acc: max, peak_memory: fewer]\nparameters:\n  selector: {choices: [all]}\n")
    assert main(["sweep", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "objectives: peak_memory: direction 'fewer' must be max or min" in err
    assert "Traceback" not in err


# --- a 3-objective front --------------------------------------------------------------------------

def _report(tmp_path, rows, goals=None, per_example=None):
    """A SweepReport over synthetic finished trials (``rows``: column values), each checkpoint
    holding a per-example validation record when given."""
    import pandas as pd

    from raylsl.report import SweepReport, columns

    full = []
    for i, row in enumerate(rows):
        checkpoint = tmp_path / f"ckpt-{i}"
        checkpoint.mkdir(exist_ok=True)
        if per_example is not None:
            (checkpoint / "results.json").write_text(json.dumps({"after_per_example": {"acc": per_example[i]}}))
        full.append({"trial": i, "trial_id": f"t{i}", "status": "TERMINATED", "n": None, "rank": 8,
                     "blocks": f"b{i}", "pct_of_all_blocks": 100.0, "test_acc": math.nan, "train_time_s": 1.0,
                     "selection_time_s": 0.0, "checkpoint": str(checkpoint), "params": "{}", "error": "",
                     "selector": "last", "trainable_params": 1000, **row})
    return SweepReport(tmp_path, pd.DataFrame(full, columns=columns("acc")), metric="acc", objectives=goals)


@pytest.mark.parametrize("seed", range(4))
def test_a_three_objective_front_is_optunas_front_on_the_same_values(tmp_path, seed):
    optuna = pytest.importorskip("optuna")
    rng = np.random.default_rng(seed)
    # coarse values: ties and duplicates happen, as with accuracies on a few hundred examples
    rows = [{"val_acc": rng.integers(0, 6) / 10, "peak_memory": float(rng.integers(1, 6) * 2**20),
             "step_time": float(rng.integers(1, 6)) / 10} for _ in range(30)]
    goals = {"val_acc": "max", "peak_memory": "min", "step_time": "min"}
    ours = set(_report(tmp_path, rows, goals).pareto_front()["trial_id"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for i, row in enumerate(rows):
        study.add_trial(optuna.trial.create_trial(values=[row[k] for k in goals], user_attrs={"id": f"t{i}"}))
    assert ours == {t.user_attrs["id"] for t in study.best_trials}


def test_the_front_table_and_figure_show_every_objective(tmp_path):
    rows = [{"val_acc": 0.7, "peak_memory": 300 * 2**20, "step_time": 0.5, "selector": "all"},
            {"val_acc": 0.7, "peak_memory": 200 * 2**20, "step_time": 0.6},
            {"val_acc": 0.6, "peak_memory": 400 * 2**20, "step_time": 0.7}]  # dominated by the first
    report = _report(tmp_path, rows, {"val_acc": "max", "peak_memory": "min", "step_time": "min"})
    table = report.front_table()
    assert "peak memory (MiB) | step time (s) | val acc" in table and "| 200 | 0.600 | 0.700 |" in table
    assert len(report.pareto_front()) == 2
    fig = report.plot(tmp_path / "front.png")
    assert len(fig.axes) == 3 and (tmp_path / "front.png").stat().st_size > 10_000  # 3 pairwise panels


# --- Pareto halving over 3 objectives -------------------------------------------------------------

def test_halving_with_three_objectives_by_hand():
    from raylsl.sweep.scheduler import survivors

    directions = ("max", "min", "min")
    # (val acc, peak memory, step time, val loss) at a rung, eta 2: keep ceil(6/2) = 3 and the first front.
    records = {"a": (0.8, 300.0, 0.50, None),   # front: best accuracy
               "b": (0.7, 200.0, 0.60, None),   # front: least memory
               "c": (0.7, 250.0, 0.40, None),   # front: fastest
               "d": (0.7, 260.0, 0.45, None),   # dominated by c (same acc, more memory, slower): front 2
               "e": (0.6, 300.0, 0.70, None),   # dominated by a, b and c
               "f": (0.5, 400.0, 0.90, None)}   # dominated by all
    # Front 1 = {a, b, c}: three members are ceil(6/2), so exactly they continue.
    assert survivors(records, 2, directions) == {"a", "b", "c"}
    # With eta 1.5 -> keep ceil(6/1.5) = 4: the front and then the best of front 2 ({d}: e and f are lower).
    assert survivors(records, 1.5, directions) == {"a", "b", "c", "d"}
    # On (acc, memory) alone c loses to b: it is front 2 and, keeping 2 of 6 (eta 3), it stops;
    # its step time is what keeps it in the 3-objective rung.
    two = {k: (v[0], v[1], v[3]) for k, v in records.items()}
    assert survivors(two, 2, ("max", "min")) >= {"a", "b"} and "c" not in survivors(two, 3, ("max", "min"))


def test_the_scheduler_ranks_a_rung_by_the_sweeps_objectives_from_the_steps_so_far(tmp_path):
    pytest.importorskip("ray.tune")
    from ray.tune.schedulers import TrialScheduler

    from raylsl.sweep.scheduler import ParetoHalving

    goals = {"val_acc": "max", "peak_memory": "min", "step_time": "min"}
    halving = ParetoHalving(eta=2, rungs=1, state_to=str(tmp_path), goals=goals)
    rung = {"final": False, "fraction": 0.5, "trainable_params": 100, "val_loss": 0.7}
    assert halving.decide("a", {}, {**rung, "val_acc": 0.6, "peak_memory": 100, "step_time": 0.1}) == "CONTINUE"
    # b has fewer parameters (which this sweep does not rank by) but more memory and time: stopped
    assert halving.decide("b", {}, {**rung, "trainable_params": 1, "val_acc": 0.6, "peak_memory": 200,
                                    "step_time": 0.2}) == TrialScheduler.STOP
    # a rung report without the costs (an older trial) is not judged
    assert halving.decide("c", {}, {**rung, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    saved = json.loads((tmp_path / "scheduler.json").read_text())
    assert saved["records"]["0.5"]["b"] == [0.6, 200.0, 0.2, 0.7] and saved["stopped"] == {"b": "0.5"}


# --- the recommendation by cost -------------------------------------------------------------------

def test_recommending_by_memory_picks_another_block_set_than_by_parameters(tmp_path):
    # Equal parameters, different lowest block: backward through more blocks keeps more activations.
    n = 200
    good = [1.0] * 150 + [0.0] * 50
    rows = [{"selector": "all", "blocks": "0-29 (30)", "trainable_params": 2400, "val_acc": 0.75,
             "peak_memory": 1000 * 2**20, "step_time": 1.00},
            {"selector": "first", "blocks": "0-14 (15)", "trainable_params": 1200, "val_acc": 0.75,
             "peak_memory": 700 * 2**20, "step_time": 0.86},
            {"selector": "last", "blocks": "15-29 (15)", "trainable_params": 1200, "val_acc": 0.745,
             "peak_memory": 570 * 2**20, "step_time": 0.70}]
    per = [good, good, [1.0] * 149 + [0.0] * 51]
    report = _report(tmp_path, rows, per_example=per)
    by_params = report.recommend(eps=0.01)
    by_memory = report.recommend(eps=0.01, cost="peak_memory")
    assert by_params["blocks"] == "0-14 (15)"  # equal parameters: the better accuracy
    assert by_memory["blocks"] == "15-29 (15)"
    assert by_memory["ratios"]["peak_memory"] == pytest.approx(0.57) and by_memory["ratios"]["step_time"] == 0.70
    assert by_memory["text"].startswith("Recommended by memory (within 0.01 of all blocks): last, blocks 15-29 at r8: "
                                        "0.57x memory, 0.70x step time, 0.50x parameters of all blocks, val acc "
                                        "-0.5 points [")
    with pytest.raises(ConfigError, match="choose one of"):
        report.recommend(cost="gpu_hours")


def test_a_sweep_without_costs_says_so_instead_of_recommending(tmp_path):
    report = _report(tmp_path, [{"selector": "all", "val_acc": 0.7}, {"val_acc": 0.7, "trainable_params": 10}])
    with pytest.raises(ConfigError, match="recorded peak_memory"):
        report.recommend(cost="peak_memory")


# --- the loop's record ----------------------------------------------------------------------------

def test_step_costs_time_after_warm_up_and_count_live_tensor_bytes():
    import torch

    from raylsl.training.costs import StepCosts, held_bytes

    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    costs = StepCosts(model, optimizer, torch.device("cpu"))
    assert costs.base == held_bytes(model) == (64 * 64 + 64) * 4
    for seconds in (9.0, 7.0, 0.1, 0.2, 0.3, 0.4):
        costs.start_step()
        model(torch.randn(32, 64)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        costs.end_step(seconds, tokens=100)
    out = costs.summary()
    assert out["timed_steps"] == 4 and out["step_time"] == pytest.approx(0.25)  # the two warm-up steps left out
    assert out["tokens_per_second"] == pytest.approx(400 / 1.0)
    assert out["step_time_spread"] > 0
    # the warm-up saw the gradients and AdamW's two moments (3 x the parameters) besides activations
    assert out["peak_memory"] >= costs.base + 3 * costs.base and out["peak_memory_source"] == "torch_live_bytes"


def test_live_tensor_bytes_are_the_same_on_every_run_of_the_same_configuration():
    import torch

    from raylsl.training.costs import StepCosts

    def peak() -> int:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        model[0].requires_grad_(False)  # frozen below, trained above: as a selection leaves a model
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        costs = StepCosts(model, optimizer, torch.device("cpu"))
        for _ in range(3):
            costs.start_step()
            model(torch.randn(16, 64)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            costs.end_step(0.1, 16)
        return costs.summary()["peak_memory"]

    assert peak() == peak() == peak()  # memory ranks as it is; step time needs its spread
