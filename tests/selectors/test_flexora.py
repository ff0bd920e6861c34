import json
from pathlib import Path

import pytest
import torch

from raylsl.config import CalibrationSettings, LoraSettings, TrainSettings
from raylsl.errors import ConfigError
from raylsl.lora import apply_lora
from raylsl.recipes import train as recipe
from raylsl.selectors import Budget, LayerScores, build_selector, select_blocks
from raylsl.selectors.flexora import gates
from raylsl.selectors.lora_blocks import scaled_lora


def test_gate_math():
    alpha = torch.tensor([0.0, 0.0, 0.0, 0.0])
    assert torch.equal(gates(alpha), torch.ones(4))  # zero init: every block at full strength
    alpha = torch.tensor([1.0, -1.0, 0.5, 0.0])
    g = gates(alpha)
    assert abs(float(g.sum()) - 4) < 1e-6 and torch.allclose(g, 4 * torch.softmax(alpha, 0))
    assert torch.allclose(gates(alpha, "reference"), g**3)


def test_gate_multiplies_the_branch_once_and_alpha_gets_gradient(tiny):
    model, blocks, objective = tiny
    peft = apply_lora(model, [0, 1, 2, 3], LoraSettings(r=4, dropout=0.0), "model.layers", blocks, "decoder")
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.randint(3, 200, (2, 8))
    peft.eval()
    with torch.no_grad():
        with scaled_lora(peft, "model.layers", {2: torch.tensor(3.0)}):
            gated = peft(input_ids=ids).logits
        for name, p in peft.named_parameters():  # the same as B_2 * 3 with no gate
            if "layers.2." in name and "lora_B" in name:
                p.mul_(3.0)
        torch.testing.assert_close(peft(input_ids=ids).logits, gated)
    alpha = torch.zeros(4, requires_grad=True)
    from raylsl.data import MCExample

    batch = objective.batch([MCExample("Item 1 is red. Warm colour? Answer:", ("no", "yes"), 1)] * 2)
    with scaled_lora(peft, "model.layers", dict(enumerate(gates(alpha)))):
        objective.loss(peft, batch).backward()
    assert alpha.grad is not None and (alpha.grad != 0).all()


def test_selection_rules():
    selector = build_selector("flexora")
    scores = LayerScores("flexora", (0.3, -0.1, 0.0, 0.2), "")
    assert selector.choose(scores, Budget()) == [0, 3]          # alpha > 0, a variable count
    assert selector.choose(scores, Budget(3)) == [0, 2, 3]      # top-n when a budget is given
    with pytest.raises(ConfigError, match="no gate ended with alpha > 0"):
        selector.choose(LayerScores("flexora", (-0.1, 0.0), ""), Budget())


def test_search_leaves_base_model_untouched_and_records_trajectory(tiny, splits):
    model, blocks, objective = tiny
    ids = torch.randint(3, 200, (1, 8))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    sel = select_blocks(model, blocks, objective, splits.train, build_selector("flexora", {"search_steps": 3}),
                        Budget(2), CalibrationSettings(), None, 64, validation=splits.validation,
                        blocks_path="model.layers", lora=LoraSettings(r=4), train_settings=TrainSettings(batch_size=4))
    assert len(sel.layers) == 2 and len(sel.scores.details["trajectory"]) == 3
    assert sel.scores.details["search_seconds"] > 0 and any(a != 0 for a in sel.scores.scores)
    assert not any("lora" in name for name, _ in model.named_modules())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_flexora_needs_validation(tiny, splits):
    model, blocks, objective = tiny
    with pytest.raises(ConfigError, match="data.val_size > 0"):
        select_blocks(model, blocks, objective, splits.train, build_selector("flexora"), Budget(2),
                      CalibrationSettings(), None, 64, blocks_path="model.layers")


def test_flexora_end_to_end_fine_tunes_only_chosen_blocks(tiny_config):
    results = recipe.train(tiny_config(selector="flexora", n=2, flexora__search_steps=3, flexora__val_batches=2,
                                       name="flex"), progress=False)
    run = Path(results["run_dir"])
    record = json.loads((run / "scores.json").read_text())
    assert results["adapted_blocks"] == results["layers"] == record["layers"] and len(results["layers"]) == 2
    assert results["params"]["adapter"] == 512 * 8 * 2  # the fine-tune stage's count
    assert len(record["scores"]["details"]["trajectory"]) == 3 and results["selection_time_s"] > 0
    assert (run / "flexora_trajectory.png").stat().st_size > 1000
