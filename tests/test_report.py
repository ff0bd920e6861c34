"""raylsl.report: pareto_mask against a brute-force definition and against Optuna's own front;
the 2-D hypervolume by hand. (Reports of real sweeps are checked in tests/sweep/test_sweep.py.)"""

import itertools

import numpy as np
import pytest

from raylsl.report import hypervolume_2d, pareto_mask


def brute_force(values: np.ndarray, directions: list[str]) -> np.ndarray:
    signs = np.array([1 if d == "max" else -1 for d in directions])
    gains = values * signs
    keep = []
    for a in gains:
        beaten = any(all(b[j] >= a[j] for j in range(len(a))) and any(b[j] > a[j] for j in range(len(a)))
                     for b in gains)
        keep.append(not beaten)
    return np.array(keep)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties_and_duplicates(k, seed):
    rng = np.random.default_rng(seed)
    # Few distinct values per column: many ties; repeated rows: exact duplicates.
    values = rng.integers(0, 5, size=(40, k)).astype(float)
    values = np.vstack([values, values[:5]])
    for directions in itertools.product(["max", "min"], repeat=k):
        assert (pareto_mask(values, list(directions)) == brute_force(values, list(directions))).all()


@pytest.mark.parametrize("directions", [["max", "min"], ["min", "min", "max"]])
def test_matches_optunas_front(directions):
    optuna = pytest.importorskip("optuna")
    rng = np.random.default_rng(len(directions))
    values = np.round(rng.random((60, len(directions))), 1)  # rounding makes ties
    study = optuna.create_study(directions=["maximize" if d == "max" else "minimize" for d in directions])
    for row in values:
        study.add_trial(optuna.trial.create_trial(values=list(row), params={}, distributions={}))
    optuna_front = {t.number for t in study.best_trials}
    ours = set(np.flatnonzero(pareto_mask(values, directions)).tolist())
    assert ours == optuna_front and ours


def test_duplicates_of_a_front_point_are_all_kept_and_nan_rows_never():
    values = [[0.9, 100], [0.9, 100], [0.8, 50], [0.7, 80], [float("nan"), 1]]
    assert pareto_mask(values, ["max", "min"]).tolist() == [True, True, True, False, False]


def test_bad_shapes_and_directions_are_refused():
    with pytest.raises(ValueError, match="must be"):
        pareto_mask([[1, 2]], ["max", "up"])
    with pytest.raises(ValueError, match=r"values must be \(n, 3\)"):
        pareto_mask([[1, 2]], ["max", "min", "max"])


def test_hypervolume_2d_by_hand():
    # Two staircase points above (0, 0): 2x1 + 1x(3-1) = 4.
    assert hypervolume_2d(np.array([[2.0, 1.0], [1.0, 3.0], [0.5, 0.5]]), (0.0, 0.0)) == pytest.approx(4.0)
    assert hypervolume_2d(np.empty((0, 2)), (0.0, 0.0)) == 0.0


# --- recommend ------------------------------------------------------------------------------------

def _report(tmp_path, rows, per_example, metric="acc"):
    """A SweepReport over synthetic trials ranked by ``metric``; each finished trial's checkpoint
    holds a results.json with its per-example validation record (``per_example[i]``: a list of
    accuracies, or a dict of lists as generative evaluation writes it)."""
    import json

    import pandas as pd

    from raylsl.report import SweepReport, columns

    full = []
    for i, row in enumerate(rows):
        checkpoint = tmp_path / f"ckpt-{i}"
        if row.get("status", "TERMINATED") == "TERMINATED":
            checkpoint.mkdir()
            record = per_example[i] if isinstance(per_example[i], dict) else {"acc": per_example[i]}
            (checkpoint / "results.json").write_text(json.dumps({"after_per_example": record}))
        full.append({"trial": i, "trial_id": f"t{i}", "status": "TERMINATED", "n": None, "rank": 4, "blocks": f"b{i}",
                     "pct_of_all_blocks": 100.0 * row["trainable_params"] / rows[0]["trainable_params"],
                     f"test_{metric}": float("nan"), "train_time_s": 1.0, "selection_time_s": 0.0,
                     "checkpoint": str(checkpoint), "params": "{}", "error": "", **row})
    return SweepReport(tmp_path, pd.DataFrame(full, columns=columns(metric)), metric=metric)


def _correct(n, k):
    """n examples, the first k right."""
    return [1.0] * k + [0.0] * (n - k)


def test_recommend_takes_the_fewest_parameters_within_eps_of_all_blocks(tmp_path):
    n = 400
    rows = [{"selector": "all", "trainable_params": 1000, "val_acc": 0.70},
            {"selector": "cka", "trainable_params": 300, "val_acc": 0.695},    # within 0.01
            {"selector": "last", "trainable_params": 300, "val_acc": 0.6975},  # same size, better: the pick
            {"selector": "first", "trainable_params": 100, "val_acc": 0.68},   # smaller, but 0.02 below
            {"selector": "ist", "trainable_params": 50, "val_acc": 0.99, "status": "ERROR"}]  # not finished
    per = [_correct(n, 280), _correct(n, 278), _correct(n, 279), _correct(n, 272), None]
    pick = _report(tmp_path, rows, per).recommend(eps=0.01)
    assert pick["trial_id"] == "t2" and pick["selector"] == "last" and pick["baseline_val_acc"] == 0.70
    assert pick["n_val"] == n
    # the percentile interval of a bootstrapped mean of 0/1 values is about p +- 1.96 sqrt(p(1-p)/n)
    half = 1.96 * (0.6975 * 0.3025 / n) ** 0.5
    assert abs(pick["val_ci"][0] - (0.6975 - half)) < 0.01 and abs(pick["val_ci"][1] - (0.6975 + half)) < 0.01
    # paired: the records differ on one example only, so a resample's difference is -k/n, k the
    # number of times it drew that example (~Poisson(1): P(k >= 4) = 0.019 < 2.5% <= P(k >= 3) = 0.080)
    assert pick["diff_ci"][1] == 0.0 and -4 / n <= pick["diff_ci"][0] <= -3 / n
    assert pick["text"].startswith("Recommended (within 0.01 of all blocks): last, blocks b2")
    (tmp_path / "wider").mkdir()
    assert _report(tmp_path / "wider", rows, per).recommend(eps=0.03)["trial_id"] == "t3"


def test_recommend_says_plainly_when_nothing_smaller_is_close_enough(tmp_path):
    rows = [{"selector": "all", "trainable_params": 1000, "val_acc": 0.80},
            {"selector": "cka", "trainable_params": 300, "val_acc": 0.70}]
    out = _report(tmp_path, rows, [_correct(10, 8), _correct(10, 7)]).recommend(eps=0.01)
    assert out["trial_id"] is None and "train all blocks" in out["text"]
    (tmp_path / "no-baseline").mkdir()
    no_base = _report(tmp_path / "no-baseline", rows[1:], [_correct(10, 7)]).recommend()
    assert no_base["trial_id"] is None and "baseline" in no_base["text"]


def test_pareto_md_opens_with_the_recommendation(tmp_path):
    rows = [{"selector": "all", "trainable_params": 1000, "val_acc": 0.70},
            {"selector": "cka", "trainable_params": 300, "val_acc": 0.70}]
    report = _report(tmp_path, rows, [_correct(20, 14), _correct(20, 14)])
    report.write()
    lines = (tmp_path / "pareto.md").read_text().splitlines()
    assert lines[2].startswith("Recommended (within 0.01 of all blocks): cka")
    assert "difference +0.000 [0.000, 0.000]" in lines[2]  # identical records: a zero-width paired interval


# --- loss-minimising and exact-match sweeps -----------------------------------------------------------

def test_loss_fronts_and_recommendations_minimise_the_metric(tmp_path):
    rows = [{"selector": "all", "trainable_params": 1000, "val_loss": 0.50},
            {"selector": "cka", "trainable_params": 300, "val_loss": 0.505},   # within 0.01 above: the pick
            {"selector": "last", "trainable_params": 300, "val_loss": 0.52},   # same size, worse: dominated
            {"selector": "first", "trainable_params": 100, "val_loss": 0.60},  # smaller, 0.1 worse: on the front
            {"selector": "random", "trainable_params": 500, "val_loss": 0.45}]  # better than all blocks
    tokens = [3, 1, 2, 4]
    per = [{"loss": [0.5] * 4, "tokens": tokens, "exact_match": [None] * 4}] * len(rows)
    report = _report(tmp_path, rows, per, metric="loss")
    assert report.pareto_front()["trial_id"].tolist() == ["t3", "t1", "t4"]  # fewest parameters first
    pick = report.recommend(eps=0.01)
    assert pick["trial_id"] == "t1" and pick["baseline_val_loss"] == 0.50
    assert pick["val_ci"] == pytest.approx((0.5, 0.5))  # every example's loss is 0.5: no spread
    assert "val loss 0.505" in pick["text"]
    (tmp_path / "strict").mkdir()
    none = _report(tmp_path / "strict", rows[:4], per, metric="loss").recommend(eps=0.001)
    assert none["trial_id"] is None and "validation loss (0.500)" in none["text"]
    report.write()
    md = (tmp_path / "pareto.md").read_text()
    assert "Minimise validation loss" in md and "| val loss | test loss |" in md


def test_loss_bootstrap_weights_examples_by_their_target_tokens(tmp_path):
    """The held-out loss is the mean NLL per target token, so a resample's loss is sum(loss x tokens)
    / sum(tokens): with one example far longer than the rest, its loss dominates the interval."""
    from raylsl.report import _per_example, _ratio

    rows = [{"selector": "all", "trainable_params": 1000, "val_loss": 0.5},
            {"selector": "cka", "trainable_params": 10, "val_loss": 0.5}]
    record = {"loss": [1.0, 0.0, 0.0], "tokens": [98, 1, 1], "exact_match": [None, None, None]}
    report = _report(tmp_path, rows, [record, record], metric="loss")
    values = _per_example(report.trials.loc[0, "checkpoint"], "loss")
    assert _ratio(values[None])[0] == pytest.approx(0.98)  # the whole sample: the token-weighted mean
    assert _ratio(values[None, [1, 2]])[0] == 0.0


def test_exact_match_ignores_examples_without_a_reference(tmp_path):
    from raylsl.report import _per_example, _ratio

    rows = [{"selector": "all", "trainable_params": 1000, "val_exact_match": 0.5}]
    record = {"loss": [0.1] * 4, "tokens": [1] * 4, "exact_match": [1.0, None, 0.0, None]}
    report = _report(tmp_path, rows, [record], metric="exact_match")
    values = _per_example(report.trials.loc[0, "checkpoint"], "exact_match")
    assert values.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    assert _ratio(values[None])[0] == 0.5


def test_an_unknown_metric_is_refused():
    from raylsl.errors import ConfigError
    from raylsl.report import objectives

    assert objectives("loss") == {"val_loss": "min", "trainable_params": "min"}
    with pytest.raises(ConfigError, match="choose one of acc, exact_match, loss"):
        objectives("bleu")
