"""A sweep scores each static selector once per distinct score key its space can produce, for
every data-driven static selector (not only the one the end-to-end sweep uses)."""

import json
from pathlib import Path

import pytest

from raylsl.config import with_overrides
from raylsl.data import read_examples
from raylsl.plan import load_run_config, score_key
from raylsl.storage import RunDir
from raylsl.sweep.run import _score_once
from raylsl.sweep.space import load_space, trial_overrides
from tests.conftest import write_task

pytest.importorskip("optuna")

SPACE = """\
base: {base}
set: {{task: {task}, data.val_size: 16, data.test_size: 16, calibration.size: 8, flexora.search_steps: 2,
       flexora.val_batches: 1, flexora.val_batch_size: 4}}
trials: 4
parameters:
  selector: {{choices: [all, first, cka, activation, gradient, flexora]}}
  n: {{low: 1, high: 3}}
  lora.r: {{choices: [2, 4]}}
"""


def test_every_static_selector_is_scored_once_per_distinct_key(tmp_path):
    base = Path("configs/tiny-smoke.yaml").resolve()
    space_file = tmp_path / "space.yaml"
    space_file.write_text(SPACE.format(base=base, task=write_task(tmp_path / "task.jsonl")))
    space = load_space(space_file)
    config = load_run_config(str(base), space.fixed)
    run = RunDir(tmp_path / "sweep", None)
    run.local.mkdir()
    scores, seconds = _score_once(config, space, read_examples(config.task), run)

    def key(selector, rank):
        return score_key(with_overrides(config, trial_overrides({"selector": selector, "n": 1, "lora.r": rank})))

    expected = {key(s, r) for s in ("cka", "activation", "gradient", "flexora") for r in (2, 4)}
    # the rank changes Flexora's search (it trains LoRA gates at that rank), nothing else's scores
    assert len(expected) == 5 and key("flexora", 2) != key("flexora", 4) and key("cka", 2) == key("cka", 4)
    assert set(scores) == expected
    assert sorted(k.split(":")[0] for k in seconds) == ["activation", "cka", "flexora", "flexora", "gradient"]
    stored = {p.stem for p in (run.local / "scores").glob("*.json")}
    assert stored == expected
    for k in expected:
        assert json.loads((run.local / "scores" / f"{k}.json").read_text())["method"] in (
            "cka", "activation", "gradient", "flexora")
