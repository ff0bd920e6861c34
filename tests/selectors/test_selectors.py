import pytest
import torch

from raylsl.config import CalibrationSettings, load_config
from raylsl.errors import ConfigError
from raylsl.recipes import train as recipe
from raylsl.selectors import Budget, LayerScores, build_selector, choose, select_blocks
from raylsl.selectors import runner as select_module
from raylsl.selectors.hooks import capture_blocks


def _scores(*values, excluded=()):
    return LayerScores("test", tuple(values), "", tuple(excluded))


def test_topk_ties_break_toward_lower_index():
    assert choose(_scores(1, 3, 3, 3, 0), Budget(2)) == [1, 2]
    assert choose(_scores(5, 5, 5, 5), Budget(0.5)) == [0, 1]


def test_ratio_floors():
    assert choose(_scores(*range(30)), Budget(0.5)) == list(range(15, 30))
    assert len(choose(_scores(*range(7)), Budget(0.5))) == 3


def test_threshold_and_mass():
    s = _scores(0.1, 0.5, 0.3, 0.1)
    assert choose(s, Budget(threshold=0.3)) == [1, 2]
    assert choose(s, Budget(mass=0.5)) == [1]          # 0.5 / 1.0 reaches 50%
    assert choose(s, Budget(mass=0.8)) == [1, 2]       # 0.8
    assert choose(s, Budget(mass=0.85)) == [0, 1, 2]   # 0.9, tie 0/3 -> lower index


def test_excluded_blocks_never_chosen():
    s = _scores(9, 1, 2, excluded=(0,))
    assert choose(s, Budget(2)) == [1, 2]
    with pytest.raises(ConfigError, match="only 2 have a defined test score"):
        choose(s, Budget(3))


@pytest.mark.parametrize("budget, message", [
    (dict(n=0), "n=0 must be a positive block count"),
    (dict(n=-2), "n=-2 must be a positive block count"),
    (dict(n=1.5), r"n=1.5: a fraction of the blocks must be in \(0, 1\]"),
    (dict(n=0.0), r"must be in \(0, 1\]"),
    (dict(n=3, mass=0.5), "give one of n, threshold or mass"),
    (dict(mass=2.0), r"mass=2.0 must be in \(0, 1\]"),
])
def test_bad_budgets(budget, message):
    with pytest.raises(ConfigError, match=message):
        Budget(**budget)


def test_budget_larger_than_model_fails_before_scoring(tiny, splits, monkeypatch):
    model, blocks, objective = tiny
    monkeypatch.setattr(select_module, "run_selector", lambda *a, **k: pytest.fail("scored anyway"))
    with pytest.raises(ConfigError, match="n=5 exceeds the model's 4 blocks"):
        select_blocks(model, blocks, objective, splits.train, build_selector("cka"), Budget(5),
                      CalibrationSettings(), None, 64)
    with pytest.raises(ConfigError, match="rounds down to 0 blocks"):
        select_blocks(model, blocks, objective, splits.train, build_selector("cka"), Budget(0.1),
                      CalibrationSettings(), None, 64)


def test_unknown_selector_and_option():
    with pytest.raises(ConfigError, match="unknown selector 'ckaa'; available: activation, all, cka"):
        build_selector("ckaa")
    with pytest.raises(ConfigError, match="unknown key 'cka.pool'"):
        build_selector("cka", {"pool": "mean"})


def test_hooks_see_pre_final_norm_output(tiny):
    model, blocks, _ = tiny
    ids = torch.randint(3, 200, (2, 9))
    seen = {}
    with torch.no_grad(), capture_blocks(blocks, lambda i, h_in, h_out: seen.__setitem__(i, (h_in, h_out))):
        out = model(input_ids=ids, output_hidden_states=True)
    last_out = seen[len(blocks) - 1][1]
    # HF's last hidden state is post-norm; the hook sees the raw block output it is computed from.
    assert not torch.allclose(last_out, out.hidden_states[-1])
    torch.testing.assert_close(model.model.norm(last_out), out.hidden_states[-1])
    torch.testing.assert_close(seen[1][0], seen[0][1])  # block i+1's input is block i's output


@pytest.mark.parametrize("tiny", ["tiny-llama", "tiny-bert"], indirect=True)
def test_gradient_scores_nonzero_for_every_block_and_model_left_frozen(tiny, splits):
    model, blocks, objective = tiny
    sel = select_blocks(model, blocks, objective, splits.train, build_selector("gradient"), Budget(2),
                        CalibrationSettings(size=16, batch_size=8), None, 64)
    assert all(s > 0 for s in sel.scores.scores)
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())


def test_activation_sites_differ(tiny, splits):
    model, blocks, objective = tiny
    out = [select_blocks(model, blocks, objective, splits.train, build_selector("activation", {"site": site}),
                         Budget(2), CalibrationSettings(size=16), None, 64).scores.scores
           for site in ("block_output", "lora_input")]
    assert out[0] != out[1] and all(s > 0 for scores in out for s in scores)


@pytest.mark.parametrize("tiny", ["tiny-bert"], indirect=True)
def test_encoder_cka_excludes_identical_cls_input(tiny, splits):
    model, blocks, objective = tiny
    with pytest.warns(RuntimeWarning, match="block 0's pooled \\(cls\\) input"):
        sel = select_blocks(model, blocks, objective, splits.train, build_selector("cka"), Budget(3),
                            CalibrationSettings(size=16), None, 64)
    assert sel.scores.excluded == (0,) and 0 not in sel.layers and len(sel.layers) == 3


def test_calibration_comes_from_train_only(tiny_config, monkeypatch):
    seen = {}
    original = select_module.calibration_sample

    def spy(train, size, seed):
        seen["pool"] = train
        return original(train, size, seed)

    monkeypatch.setattr(select_module, "calibration_sample", spy)
    from raylsl.plan import build_plan

    plan, _ = build_plan(tiny_config(selector="activation", n=2), "calibration", storage="")
    assert seen["pool"] is plan.task.train
    held_out = {ex.context for ex in plan.task.test + plan.task.validation}
    assert not held_out & {ex.context for ex in seen["pool"]}


def test_train_with_selector_records_choice(tiny_config):
    results = recipe.train(tiny_config(selector="cka", n=0.5, name="sel", train__steps=2), progress=False)
    run = __import__("pathlib").Path(results["run_dir"])
    import json

    recorded = json.loads((run / "scores.json").read_text())
    assert recorded["layers"] == results["layers"] == results["adapted_blocks"] and len(results["layers"]) == 2
    assert recorded["scores"]["method"] == "cka" and len(recorded["scores"]["scores"]) == 4
    assert (run / "scores.png").stat().st_size > 1000
    assert load_config(run / "config.yaml").selector == "cka"


def test_python_api_with_a_loaded_model_and_by_name(splits):
    import raylsl
    from raylsl.models import resolve_model

    model, tok = resolve_model("tiny-llama").load()
    loaded = raylsl.select_layers(model, splits, selector="activation", n=2, tokenizer=tok, calibration_size=16)
    named = raylsl.select_layers("tiny-llama", splits, selector="activation", n=2, calibration_size=16)
    assert loaded.layers == named.layers and loaded.scores.scores == named.scores.scores
    assert named.cached  # same model content, same calibration: the second call hits the cache
    with pytest.raises(ConfigError, match="needs tokenizer="):
        raylsl.select_layers(model, splits, selector="cka", n=2)
    with pytest.raises(ConfigError, match="selector=cka needs a budget"):
        raylsl.select_layers("tiny-llama", splits, selector="cka")


def test_an_unreadable_score_cache_entry_is_recomputed_and_rewritten(tiny, splits, score_cache, capsys):
    """A crash mid-write (an older raylsl's) or a full disk leaves a cut-short entry: a miss, not an error."""
    import json

    model, blocks, objective = tiny

    def select():
        return select_blocks(model, blocks, objective, splits.train, build_selector("activation"), Budget(2),
                             CalibrationSettings(size=16), None, 64)

    first = select()
    (entry,) = (score_cache / "scores").glob("*.json")
    entry.write_text(entry.read_text()[:20])
    again = select()
    assert not again.cached and again.scores == first.scores
    assert "cannot be read; computing them again" in capsys.readouterr().err
    assert json.loads(entry.read_text())["scores"] == list(first.scores.scores)  # rewritten whole
    assert select().cached
