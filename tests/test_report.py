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
