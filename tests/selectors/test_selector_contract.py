"""One contract, every registered selector: adding a selector adds (at most) one row to OPTIONS."""

import json

import pytest

from raylsl.config import CalibrationSettings
from raylsl.selectors import Budget, available_selectors, build_selector, select_blocks

# Options a selector needs to run at all; everything else runs with defaults.
OPTIONS = {"list": {"layers": "1,3"}, "flexora": {"search_steps": 2, "val_batches": 2}}
BUDGET_FREE = {"all": [0, 1, 2, 3], "list": [1, 3], "ist": [0, 1, 2, 3], "lisa": [0, 1, 2, 3]}


def _select(tiny, splits, name, n=2, seed=0, options=None, **kw):
    model, blocks, objective = tiny
    selector = build_selector(name, options if options is not None else OPTIONS.get(name))
    return select_blocks(model, blocks, objective, splits.train, selector, Budget(n),
                         CalibrationSettings(size=24, seed=seed, batch_size=8), None, 64, **kw,
                         validation=splits.validation, blocks_path="model.layers")


def test_every_selector_is_covered():
    assert set(available_selectors()) >= {"cka", "activation", "gradient", "all", "first", "last", "random",
                                          "contiguous", "list"}


@pytest.mark.parametrize("name", available_selectors())
@pytest.mark.parametrize("n", [1, 3, 0.5])
def test_budget_respected_indices_valid(tiny, splits, name, n):
    sel = _select(tiny, splits, name, n=n)
    expected = BUDGET_FREE.get(name)
    if expected is not None:
        assert sel.layers == expected
    else:
        assert len(sel.layers) == (2 if n == 0.5 else n)
    assert sel.layers == sorted(set(sel.layers)) and all(0 <= i < 4 for i in sel.layers)
    assert len(sel.scores.scores) == 4 and all(s == s for s in sel.scores.scores)  # no NaN


@pytest.mark.parametrize("name", available_selectors())
def test_deterministic_under_a_seed(tiny, splits, name):
    a = _select(tiny, splits, name, use_cache=False)
    b = _select(tiny, splits, name, use_cache=False)
    assert a.layers == b.layers and a.scores.scores == b.scores.scores


@pytest.mark.parametrize("name", available_selectors())
def test_cache_hit_identical_and_changed_key_misses(tiny, splits, name, score_cache):
    first = _select(tiny, splits, name)
    again = _select(tiny, splits, name, n=1)  # a different N reuses the same scores
    assert again.scores == first.scores
    assert _select(tiny, splits, name).layers == first.layers
    if build_selector(name, OPTIONS.get(name)).needs_data:
        assert not first.cached and again.cached
        assert json.loads(next(score_cache.glob("scores/*.json")).read_text())["method"] == name
        other = _select(tiny, splits, name, seed=1)  # other calibration draw: another key
        assert not other.cached and other.scores.fingerprint != first.scores.fingerprint
    else:
        assert not again.cached and not (score_cache / "scores").exists()
