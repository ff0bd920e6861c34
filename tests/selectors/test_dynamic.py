import json
import math
from pathlib import Path

import pytest
import torch

from raylsl.config import LoraSettings
from raylsl.errors import ConfigError
from raylsl.lora import apply_lora
from raylsl.models import find_blocks, resolve_model
from raylsl.objective import make_objective
from raylsl.recipes import train as recipe
from raylsl.selectors import TrainingContext, build_selector
from raylsl.selectors.dynamic import ISTCallback, ISTConfig, LisaCallback, LisaConfig, ist_update, probe_subsets
from raylsl.selectors.lora_blocks import lora_modules_by_block, lora_params_by_block, scaled_lora
from raylsl.callbacks import Callback
from raylsl.assemble import seed_everything
from raylsl.training.loop import train_loop


def _peft_tiny(splits, seed=0):
    model, tok = resolve_model("tiny-llama").load()
    path, blocks = find_blocks(model)
    seed_everything(seed)
    model = apply_lora(model, [0, 1, 2, 3], LoraSettings(r=4), path, blocks, "decoder")
    with torch.no_grad():  # non-zero B, so each block's LoRA branch changes the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    objective = make_objective("decoder", tok, 64)
    return model, TrainingContext(model, path, 4, objective, splits.validation, seed)


def test_ist_update_matches_hand_computation():
    subsets, losses, mu = [[0, 1], [1, 2], [2, 3]], [1.0, 2.0, 0.5], 10.0
    e = [math.exp(-l) for l in losses]
    r = [v - sum(e) / 3 for v in e]
    expected = [mu * r[0], mu * (r[0] + r[1]), mu * (r[1] + r[2]), mu * r[2]]
    new = ist_update(torch.zeros(4, dtype=torch.float64), subsets, losses, mu)
    assert torch.allclose(new, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert abs(float(new.sum()) - 2 * mu * sum(r)) < 1e-12  # rewards are centred: the sum only moves by 0


def test_ist_reference_update_scales_by_sigmoid_slope():
    start = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    subsets, losses = [[0, 1], [2, 3], [1, 3]], [0.3, 0.9, 1.2]
    e = [math.exp(-l) for l in losses]
    r = [v - sum(e) / 3 for v in e]
    slope = [1 / (1 + math.exp(-x)) * (1 - 1 / (1 + math.exp(-x))) for x in start.tolist()]
    expected = start.tolist()
    for subset, reward in zip(subsets, r):
        for i in subset:
            expected[i] += 5.0 * reward * slope[i]
    new = ist_update(start, subsets, losses, 5.0, variant="reference")
    assert torch.allclose(new, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_reference_probe_subsets_follow_multinomial_sigmoid_importance():
    """antgroup's ist.py: subset ~ multinomial(sigmoid(I), N_v) without replacement. For L=3,
    N_v=2 the chance of suppressing {i, j} is w_i/W * w_j/(W - w_i) + w_j/W * w_i/(W - w_j), W = sum w."""
    importance = torch.tensor([2.0, 0.0, -2.0], dtype=torch.float64)
    w = torch.sigmoid(importance).tolist()
    W = sum(w)

    def p(i, j):
        return w[i] / W * w[j] / (W - w[i]) + w[j] / W * w[i] / (W - w[j])

    expected = {(0, 1): p(0, 1), (0, 2): p(0, 2), (1, 2): p(1, 2)}
    assert abs(sum(expected.values()) - 1) < 1e-12
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = {k: 0 for k in expected}
    for _ in range(draws):  # one candidate per update: no redraw rule involved
        counts[tuple(probe_subsets(importance, 2, 1, "reference", generator)[0])] += 1
    for subset, prob in expected.items():
        sd = (prob * (1 - prob) / draws) ** 0.5
        assert abs(counts[subset] / draws - prob) < 4 * sd, (subset, counts[subset] / draws, prob)
    # paper variant: uniform, each pair 1/3
    uniform = {k: 0 for k in expected}
    for _ in range(6000):
        uniform[tuple(probe_subsets(importance, 2, 1, "paper", generator)[0])] += 1
    assert all(abs(c / 6000 - 1 / 3) < 4 * (2 / 9 / 6000) ** 0.5 for c in uniform.values())


def test_reference_probe_subsets_redraw_repeats_within_an_update():
    generator = torch.Generator().manual_seed(1)
    importance = torch.tensor([3.0, 3.0, -3.0], dtype=torch.float64)  # {0, 1} is drawn ~87% of the time
    for _ in range(200):
        subsets = probe_subsets(importance, 2, 3, "reference", generator)
        assert sorted(map(tuple, subsets)) == [(0, 1), (0, 2), (1, 2)]  # 3 distinct of the 3 that exist
    # fewer distinct subsets than candidates: gives up redrawing instead of looping forever
    assert probe_subsets(importance, 3, 2, "reference", generator) == [[0, 1, 2], [0, 1, 2]]


def test_ist_sampling_respects_n_update_and_follows_importance(splits):
    _, ctx = _peft_tiny(splits)
    cb = ISTCallback(ISTConfig(n_update=0.5), ctx)
    draws = [cb.choose_active(step) for step in range(100)]
    assert all(len(d) == 2 and len(set(d)) == 2 and all(0 <= i < 4 for i in d) for d in draws)
    one = ISTCallback(ISTConfig(n_update=1), ctx)
    one.importance = torch.tensor([6.0, -6.0, 0.0, -6.0], dtype=torch.float64)
    counts = [sum(one.choose_active(step) == [i] for step in range(400)) for i in range(4)]
    # p_i ~ U(0, sigmoid(I_i)): block 0 (0.998) beats block 2 (0.5) about 3 times in 4.
    assert counts[0] > 2 * counts[2] > 0 and counts[1] + counts[3] < 10
    ref = ISTCallback(ISTConfig(n_update=1, variant="reference"), ctx)
    ref.importance = torch.tensor([6.0, -6.0, 6.0, 6.0], dtype=torch.float64)  # reference: high I = safe to freeze
    assert sum(ref.choose_active(s) == [1] for s in range(100)) > 90


def test_suppression_scales_once_and_is_restored_even_on_error(splits):
    model, ctx = _peft_tiny(splits)
    ids = torch.randint(3, 200, (2, 8))
    model.eval()
    with torch.no_grad():
        base = model(input_ids=ids).logits
        with scaled_lora(model, ctx.blocks_path, {i: 0.0 for i in range(4)}):
            off = model(input_ids=ids).logits
        with model.disable_adapter():
            no_lora = model(input_ids=ids).logits
        torch.testing.assert_close(off, no_lora)  # factor 0 on every block == adapters disabled
        with pytest.raises(RuntimeError, match="boom"):
            with scaled_lora(model, ctx.blocks_path, {1: 0.25}):
                raise RuntimeError("boom")
        assert all(not b._forward_hooks for ms in lora_modules_by_block(model, ctx.blocks_path).values()
                   for m in ms for b in m.lora_B.values())
        torch.testing.assert_close(model(input_ids=ids).logits, base)


def test_probe_update_changes_importance_and_restores_model(splits):
    model, ctx = _peft_tiny(splits)
    cb = ISTCallback(ISTConfig(n_probe=2, probe_batch_size=4), ctx)
    ids = torch.randint(3, 200, (1, 6))
    model.train()
    before = model.eval()(input_ids=ids).logits
    model.train()
    new = cb.probe_update(model)
    assert new.abs().sum() > 0 and model.training
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, before)


class Spy(Callback):
    """Checks, every step, that blocks the dynamic selector left inactive did not move."""

    def __init__(self, dynamic, params):
        self.dynamic, self.params, self.checked = dynamic, params, 0

    def on_step_start(self, state):
        self.before = {i: [p.detach().clone() for p in ps] for i, ps in self.params.items()}
        self.had_state = {i: all(state.optimizer.state.get(p) for p in ps) for i, ps in self.params.items()}

    def on_step_end(self, state, metrics):
        for i, ps in self.params.items():
            same = all(torch.equal(a, p) for a, p in zip(self.before[i], ps))
            if i in self.dynamic.active:
                assert not same, f"active block {i} did not train at step {state.step}"
            else:
                assert same, f"inactive block {i} changed at step {state.step}"
                self.checked += self.had_state[i]  # it had AdamW momentum from an earlier step


@pytest.mark.parametrize("make", [lambda ctx: LisaCallback(LisaConfig(n_active=1, interval=1), ctx),
                                  lambda ctx: ISTCallback(ISTConfig(n_update=1, interval=2, probe_batch_size=4), ctx)],
                         ids=["lisa", "ist"])
def test_inactive_blocks_are_bit_identical_despite_momentum_and_decay(splits, tiny_config, tmp_path, make):
    model, ctx = _peft_tiny(splits)
    dynamic = make(ctx)
    spy = Spy(dynamic, lora_params_by_block(model, ctx.blocks_path))
    settings = tiny_config(train__weight_decay=0.5, train__steps=8, train__checkpoint_every=0).train
    train_loop(model, ctx.objective, splits.train, settings, tmp_path, (dynamic, spy), progress=False)
    assert spy.checked > 0  # the claim was tested on blocks that carried optimizer state
    assert sum(dynamic.counts) == 8


def test_lisa_redraws_every_interval(splits):
    _, ctx = _peft_tiny(splits)
    cb = LisaCallback(LisaConfig(n_active=2, interval=3), ctx)
    seen = []
    for step in range(9):
        cb.active = cb.choose_active(step)
        seen.append(tuple(cb.active))
    assert all(len(set(s)) == 2 for s in seen)
    assert seen[0] == seen[1] == seen[2] and seen[3] == seen[4] == seen[5] and seen[6] == seen[7] == seen[8]


def test_bad_dynamic_options():
    with pytest.raises(ConfigError, match="ist.variant='papr' must be paper or reference"):
        build_selector("ist", {"variant": "papr"})
    with pytest.raises(ConfigError, match="unknown key 'ist.nu'"):
        build_selector("ist", {"nu": 3})


def test_ist_n_update_larger_than_model(splits):
    _, ctx = _peft_tiny(splits)
    with pytest.raises(ConfigError, match="ist.n_update: n=9 exceeds the model's 4 blocks"):
        ISTCallback(ISTConfig(n_update=9), ctx)


def test_ist_end_to_end_records_and_resumes(tiny_config, monkeypatch):
    overrides = dict(selector="ist", ist__n_update=0.5, ist__interval=2, ist__probe_batch_size=4,
                     train__steps=6, train__checkpoint_every=3)
    straight = recipe.train(tiny_config(name="ist-a", **overrides), progress=False)
    run = Path(straight["run_dir"])
    record = json.loads((run / "ist.json").read_text())
    assert len(record["importance_per_step"]) == 6 and sum(record["steps_trained_per_block"]) == 12
    assert any(v != 0 for v in record["final_importance"])
    assert (run / "ist_importance.png").stat().st_size > 1000
    dyn = straight["dynamic"]
    assert dyn["adapter_params_existing"] == straight["params"]["adapter"]
    assert dyn["adapter_params_updated_per_step"] == straight["params"]["adapter"] / 2
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(len(m["active_blocks"]) == 2 and len(m["importance"]) == 4 for m in metrics)

    class Stop(Exception):
        pass

    class StopAt4(Callback):
        def on_step_start(self, state):
            if state.step == 4:
                raise Stop

    from raylsl.training import session

    original = session.train_loop
    monkeypatch.setattr(session, "train_loop", lambda *a, callbacks=(), **k: original(*a, callbacks=callbacks + (StopAt4(),), **k))
    with pytest.raises(Stop):
        recipe.train(tiny_config(name="ist-b", **overrides), progress=False)
    monkeypatch.setattr(session, "train_loop", original)
    resumed = recipe.resume(Path(straight["run_dir"]).parent / "ist-b", progress=False)
    assert resumed["train"]["resumed_from"] == 3
    assert resumed["dynamic"]["final_importance"] == dyn["final_importance"]
    assert resumed["after"] == straight["after"]


def test_counts_and_fractions_from_the_command_line(tiny_config):
    from raylsl.config import load_config

    config = load_config(None, ["selector=ist", "ist.n_update=3", "ist.n_probe=0.5", "lisa.n_active=2"])
    assert config.selector_options["ist"] == {"n_update": 3, "n_probe": 0.5}
    assert build_selector("ist", config.selector_options["ist"]).config.n_update == 3
    assert isinstance(build_selector("lisa", {"n_active": 2}).config.n_active, int)
