"""Selective activation checkpointing: same gradients, no backward below the lowest trained block."""

import json
from pathlib import Path

import pytest
import torch

from raylsl.config import LoraSettings
from raylsl.lora import apply_lora
from raylsl.models import find_blocks, resolve_model
from raylsl.models.checkpointing import checkpoint_blocks, checkpointed_blocks, uncheckpoint_blocks
from raylsl.data import GenExample
from raylsl.objective import make_objective
from tests.test_generative import colour_rows

COMPLETIONS = [GenExample("completion", prompt=r["prompt"], completion=r["completion"]) for r in colour_rows(12)]


def _model(layers, dropout=0.1):
    model, tok = resolve_model("tiny-llama").load()
    path, blocks = find_blocks(model)
    torch.manual_seed(0)
    peft = apply_lora(model, layers, LoraSettings(r=4, dropout=dropout), path, blocks, "decoder")
    for name, param in peft.named_parameters():  # B = 0 at init would leave A's gradient 0
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft, tok, blocks


def _step(model, batch, objective, seed=1):
    torch.manual_seed(seed)  # the same dropout masks in both runs
    model.train()
    loss = objective.loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


class _Counts:
    """Backward passes that reach each block's output."""

    def __init__(self, blocks):
        self.backward = [0] * len(blocks)
        for i, block in enumerate(blocks):
            block.register_forward_hook(lambda m, a, out, i=i: self._seen(i, out))

    def _seen(self, i, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if hidden.requires_grad:
            hidden.register_hook(lambda grad, i=i: self.backward.__setitem__(i, self.backward[i] + 1))


def test_checkpointing_from_the_lowest_adapted_block_gives_the_same_gradients():
    model, tok, blocks = _model([2, 3])
    objective = make_objective("decoder", tok, 64, generative=True)
    batch = objective.batch(COMPLETIONS[:8])
    counts = _Counts(blocks)
    plain_loss, plain = _step(model, batch, objective)
    plain_backward = list(counts.backward)
    assert checkpoint_blocks(blocks, 2) == [2, 3] == checkpointed_blocks(blocks)
    runs = [0] * len(blocks)
    for i in (2, 3):  # count the plain forwards the checkpoint wrapper runs (forward, recomputation)
        inner = getattr(blocks[i], "_raylsl_plain_forward")
        setattr(blocks[i], "_raylsl_plain_forward",
                lambda *a, i=i, inner=inner, **k: (runs.__setitem__(i, runs[i] + 1), inner(*a, **k))[1])
    ckpt_loss, ckpt = _step(model, batch, objective)
    assert plain_loss == ckpt_loss
    assert plain.keys() == ckpt.keys() and len(plain) == 2 * 2 * 7  # A and B of 7 linears in 2 blocks
    for name in plain:  # recomputation replays the same ops with the same dropout masks: bit-equal in fp32
        assert torch.equal(plain[name], ckpt[name]), name
    backward = [b - a for a, b in zip(plain_backward, counts.backward)]
    # Blocks 2 and 3 run forward once and again in backward; blocks 0-1 never run backward at all.
    assert backward == plain_backward == [0, 0, 1, 1]
    assert runs == [0, 0, 2, 2]
    uncheckpoint_blocks(blocks)
    assert checkpointed_blocks(blocks) == []


def test_evaluation_runs_the_plain_forward():
    model, tok, blocks = _model([1, 3], dropout=0.0)
    checkpoint_blocks(blocks, 1)
    counts = _Counts(blocks)
    objective = make_objective("decoder", tok, 64, generative=True)
    with torch.no_grad():
        objective.loss(model.eval(), objective.batch(COMPLETIONS[:4]))
    assert counts.backward == [0, 0, 0, 0]


@pytest.mark.parametrize("selector", ["ist", "lisa"])
def test_dynamic_selectors_train_with_checkpointing(tiny_config, tmp_path, selector):
    from raylsl.recipes.train import train

    options = {"ist": {"ist.n_update": 2, "ist.interval": 2}, "lisa": {"lisa.n_active": 2, "lisa.interval": 2}}[selector]
    results = train(tiny_config(selector=selector, layers="all", train__activation_checkpointing="on",
                                train__steps=8, **{k.replace(".", "__"): v for k, v in options.items()}),
                    progress=False)
    assert results["checkpointed_blocks"] == [0, 1, 2, 3]  # any block may be the active one
    losses = [json.loads(line)["loss"] for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
