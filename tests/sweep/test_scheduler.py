"""Pareto-aware successive halving: its decisions on synthetic reports, against hand computation."""

import math

import numpy as np
import pytest
from ray.tune.schedulers import TrialScheduler

from raylsl.sweep.scheduler import ParetoHalving, crowding, front_ranks, rung_fractions, rung_points, survivors
from raylsl.sweep.trial import eval_steps

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP
BASELINE = {"selector": "all", "lora.r": 4}


def at(fraction, acc, params):
    """An evaluation during training, as a trial reports it."""
    return {"val_acc": acc, "trainable_params": params, "fraction": fraction, "step": 1, "final": False}


def test_rungs_and_the_steps_that_reach_them():
    assert rung_fractions(3, 2) == pytest.approx((1 / 9, 1 / 3))
    assert rung_fractions(2, 3) == pytest.approx((1 / 8, 1 / 4, 1 / 2))
    assert eval_steps(rung_fractions(3, 2), 60) == [7, 20]  # 6.67 -> 7; 1/3 of 60 is exactly 20
    assert eval_steps(rung_fractions(3, 2), 4) == [1, 2]
    assert eval_steps((), 60) == []


def test_front_ranks_by_hand():
    # A and B are the front; C is beaten by A (same params, less acc); D by A and C.
    points = np.array([[0.9, 100], [0.8, 50], [0.7, 100], [0.6, 200]])
    assert front_ranks(points).tolist() == [0, 0, 1, 2]
    assert front_ranks(np.array([[0.5, 10], [0.5, 10]])).tolist() == [0, 0]  # copies dominate neither
    assert front_ranks(np.array([[math.nan, 10], [0.5, 10]])).tolist() == [1, 0]


def test_crowding_by_hand():
    # the middle point's neighbours span the whole range in both objectives: 1 + 1
    distance = crowding(np.array([[0.9, 100], [0.8, 50], [0.85, 70]]))
    assert distance[0] == distance[1] == math.inf and distance[2] == pytest.approx(2.0)
    # neighbours 0.8..0.88 of 0.8..0.9 in accuracy (0.8), 50..80 of 50..100 in params (0.6)
    distance = crowding(np.array([[0.8, 50], [0.85, 60], [0.88, 80], [0.9, 100]]))
    assert distance[1] == pytest.approx(0.8 + 0.6)


def test_survivors_keep_the_front_and_the_best_1_over_eta():
    assert survivors({"a": (0.9, 100), "b": (0.1, 500)}, eta=3) == {"a", "b"}  # fewer than eta: nobody stops
    assert survivors({"a": (0.9, 100), "b": (0.5, 100), "c": (0.6, 200)}, eta=3) == {"a"}
    front = {"a": (0.9, 300), "b": (0.8, 200), "c": (0.7, 100)}
    beaten = {"d": (0.6, 300), "e": (0.5, 300), "f": (0.4, 300)}
    assert survivors({**front, **beaten}, eta=3) == set(front)  # the whole front, though ceil(6/3) = 2
    # one front member; ceil(6/3) = 2 keeps the better of the second front by crowding: the second
    # front is d (0.6, 300), e (0.5, 200), f (0.55, 250): d and e are its boundary points, then by id
    second = {"a": (0.9, 100), "d": (0.6, 300), "e": (0.5, 200), "f": (0.55, 250), "g": (0.2, 400), "h": (0.1, 400)}
    assert survivors(second, eta=3) == {"a", "d"}
    assert survivors(second, eta=2) == {"a", "d", "e"}  # eta=2 keeps ceil(6/2) = 3


def test_a_tie_in_the_metric_is_ordered_by_validation_loss():
    # three trials tie at 0.64; the smallest gap between distinct values is 0.06, so the group is
    # spread by at most 0.06 / 4, lowest loss highest: 0.7 -> +0.015, 0.8 -> +0.0075, 0.9 -> +0
    records = [(0.64, 100, 0.9), (0.64, 200, 0.7), (0.64, 300, 0.8), (0.70, 50, 1.0)]
    np.testing.assert_allclose(rung_points(records), [[0.64, 100], [0.655, 200], [0.6475, 300], [0.70, 50]])
    # a minimised metric is spread downwards; equal losses stay equal; a missing loss leaves the group tied
    assert rung_points([(2.0, 1, 0.5), (2.0, 2, 0.4), (1.0, 3, 0.1)], ("min", "min"))[:, 0].tolist() == \
        pytest.approx([2.0, 2.0 - 0.25, 1.0])  # gap 1.0: the lower loss moves down by a quarter
    assert rung_points([(0.5, 1, 0.3), (0.5, 2, 0.3)])[:, 0].tolist() == [0.5, 0.5]
    assert rung_points([(0.5, 1, 0.3), (0.5, 2, None), (0.5, 3)])[:, 0].tolist() == [0.5, 0.5, 0.5]


def test_at_a_rung_where_every_trial_has_the_same_accuracy_the_loss_decides_with_the_parameters():
    # every trial at the majority-class rate; more parameters, lower loss: nobody is dominated
    tied = {f"t{i}": (0.64, 100 * (i + 1), 1.0 - i / 10) for i in range(6)}
    assert survivors(tied, eta=3) == set(tied)
    # without losses the fewest parameters dominate everyone: only the front and ceil(6/3) stay
    assert survivors({k: v[:2] for k, v in tied.items()}, eta=3) == {"t0", "t1"}
    # a trial with more parameters and a higher loss than another is dominated
    worse = {**tied, "t6": (0.64, 250, 0.95)}  # t1 (200 parameters, loss 0.9) beats it on both
    assert "t6" not in survivors(worse, eta=3)


def test_the_stop_message_says_when_the_loss_broke_a_tie(tmp_path, capsys):
    scheduler = ParetoHalving(eta=3, rungs=1, state_to=str(tmp_path))
    for trial_id, params, loss in (("a", 100, 0.8), ("b", 200, 0.7)):
        report = {**at(1 / 3, 0.64, params), "val_loss": loss}
        assert scheduler.decide(trial_id, {"selector": "last"}, report) == CONTINUE
    assert scheduler.decide("c", {"selector": "last"}, {**at(1 / 3, 0.64, 300), "val_loss": 0.9}) == STOP
    assert "tied with 2 in val_acc, ordered by val_loss 0.900" in capsys.readouterr().out
    assert ParetoHalving(metric="loss").tiebreak is None  # the loss is the metric: nothing to break ties with


def test_a_dominated_trial_stops_at_its_rung_and_front_trials_and_the_baseline_never_do(tmp_path):
    scheduler = ParetoHalving(eta=3, rungs=2, baseline=BASELINE, state_to=str(tmp_path))
    configs = {"base": BASELINE, "t1": {"selector": "last", "n": 3, "lora.r": 4},
               "t2": {"selector": "first", "n": 3, "lora.r": 4}, "t3": {"selector": "first", "n": 2, "lora.r": 4}}
    # the baseline and t1 reach the first rung: fewer than eta, nobody stops
    assert scheduler.decide("base", configs["base"], at(1 / 9, 0.50, 1000)) == CONTINUE
    assert scheduler.decide("t1", configs["t1"], at(1 / 9, 0.70, 300)) == CONTINUE
    # t2 is beaten by t1 (less accurate, same params): 3 recorded, ceil(3/3) = 1 kept besides the front
    assert scheduler.decide("t2", configs["t2"], at(0.15, 0.60, 300)) == STOP
    assert scheduler.stopped == {"t2": f"{1 / 9:.6g}"}
    # t3 has fewer parameters than anyone: on the front, so it continues though less accurate
    assert scheduler.decide("t3", configs["t3"], at(1 / 9, 0.30, 200)) == CONTINUE
    # at the second rung the baseline is dominated by t1 (more accurate, fewer params) yet goes on
    assert scheduler.decide("t1", configs["t1"], at(1 / 3, 0.80, 300)) == CONTINUE
    assert scheduler.decide("t3", configs["t3"], at(1 / 3, 0.35, 200)) == CONTINUE
    assert scheduler.decide("base", configs["base"], at(1 / 3, 0.55, 1000)) == CONTINUE
    # a report that is not an evaluation during training, or a rung already recorded, decides nothing
    assert scheduler.decide("t9", configs["t2"], {"step": 5, "loss": 1.0}) == CONTINUE
    assert scheduler.decide("t9", configs["t2"], {**at(1.0, 0.0, 10 ** 6), "final": True}) == CONTINUE
    assert scheduler.decide("t3", configs["t3"], at(1 / 3, 0.0, 200)) == CONTINUE
    assert scheduler.records[f"{1 / 3:.6g}"]["t3"] == (0.35, 200.0, None)  # no val_loss reported


def test_a_loss_minimising_sweep_stops_the_highest_loss(tmp_path):
    """Ranked by held-out loss, the same three reports that stop the least accurate trial stop the
    one with the highest loss; the value is read from val_loss, not val_acc."""
    def loss_at(fraction, loss, params):
        return {"val_loss": loss, "trainable_params": params, "fraction": fraction, "final": False}

    scheduler = ParetoHalving(eta=3, rungs=1, baseline=BASELINE, state_to=str(tmp_path), metric="loss")
    assert scheduler.decide("a", {"selector": "last", "n": 3}, loss_at(1 / 3, 0.40, 300)) == CONTINUE
    assert scheduler.decide("b", {"selector": "first", "n": 3}, loss_at(1 / 3, 0.30, 300)) == CONTINUE
    assert scheduler.decide("c", {"selector": "random", "n": 3}, loss_at(1 / 3, 0.50, 300)) == STOP
    assert scheduler.decide("d", {"selector": "cka", "n": 3}, at(1 / 3, 0.01, 300)) == CONTINUE  # no val_loss
    assert survivors({"a": (0.4, 300), "b": (0.3, 300), "c": (0.5, 300)}, 3, ("min", "min")) == {"b"}
    assert survivors({"a": (0.4, 300), "b": (0.3, 300), "c": (0.5, 300)}, 3, ("max", "min")) == {"c"}


def test_a_resumed_sweep_keeps_the_rungs_and_the_decisions(tmp_path):
    first = ParetoHalving(eta=3, rungs=1, baseline=BASELINE, state_to=str(tmp_path))
    first.decide("a", {"selector": "last", "n": 2}, at(1 / 3, 0.9, 100))
    first.decide("b", {"selector": "last", "n": 3}, at(1 / 3, 0.8, 200))
    assert first.decide("c", {"selector": "first", "n": 3}, at(1 / 3, 0.7, 200)) == STOP
    # the driver restarts: a new scheduler (Tune unpickles the one the sweep started with) reads
    # the records back, so d is judged against a, b and c, not alone
    resumed = ParetoHalving(eta=3, rungs=1, baseline=BASELINE, state_to=str(tmp_path))
    assert resumed.decide("d", {"selector": "first", "n": 2}, at(1 / 3, 0.5, 150)) == STOP
    assert resumed.stopped == {"c": f"{1 / 3:.6g}", "d": f"{1 / 3:.6g}"}
    # c was stopped, but the driver died before Tune recorded it: rerun, it stops at its next report
    assert resumed.decide("c", {"selector": "first", "n": 3}, {"step": 1, "loss": 0.5}) == STOP
    alone = ParetoHalving(eta=3, rungs=1, baseline=BASELINE, state_to=str(tmp_path / "other"))
    assert alone.decide("d", {"selector": "first", "n": 2}, at(1 / 3, 0.5, 150)) == CONTINUE


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="eta"):
        ParetoHalving(eta=1)
