"""The LM head in chunks: the same loss and gradients as all at once, and a fallback that is checked."""

import pytest
import torch

from raylsl.data import GenExample
from raylsl.models import find_blocks, resolve_model
from raylsl.config import LoraSettings
from raylsl.lora import apply_lora
from raylsl.objective import make_objective
from raylsl.objective.causal import target_nll
from tests.test_generative import colour_rows
from tests.test_objective import _tiny_gemma2

EXAMPLES = [GenExample("completion", prompt=r["prompt"], completion=r["completion"] * 3) for r in colour_rows(8)]


@pytest.fixture(scope="module")
def lora_llama():
    model, tok = resolve_model("tiny-llama").load()
    path, blocks = find_blocks(model)
    torch.manual_seed(0)
    peft = apply_lora(model, [1, 3], LoraSettings(r=4, dropout=0.0), path, blocks, "decoder")
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return peft.train(), tok


def _loss_and_grads(model, batch, layout, chunk):
    loss = target_nll(model, batch, layout, chunk)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_chunked_head_gives_the_loss_and_gradients_of_the_whole(lora_llama, layout):
    model, tok = lora_llama
    objective = make_objective("decoder", tok, 96, generative=True)
    batch = objective.batch(EXAMPLES)
    targets = objective.target_count(batch)
    assert targets > 40
    whole, whole_grads = _loss_and_grads(model, batch, layout, 0)
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    chunked, chunked_grads = _loss_and_grads(model, batch, layout, 7)
    handle.remove()
    # forward: the model's own call on no rows, then one call per chunk; backward recomputes each chunk
    chunks = -(-targets // 7)
    assert calls[0] == 0 and calls[1:chunks + 1] == [7] * (chunks - 1) + [targets - 7 * (chunks - 1)]
    assert len(calls) == 1 + 2 * chunks
    # Only the order of float sums differs (per chunk, then over chunks; the hidden states' gradient
    # assembled from chunks): fp32 rounding; measured: the loss equal, gradients 4e-7 of their norm.
    assert chunked == pytest.approx(whole, rel=1e-6)
    assert whole_grads.keys() == chunked_grads.keys()
    for name in whole_grads:
        error = float((chunked_grads[name] - whole_grads[name]).norm() / whole_grads[name].norm())
        assert error < 5e-6, (name, error)


def test_objective_keeps_the_chunked_head_when_it_agrees(lora_llama):
    model, tok = lora_llama
    objective = make_objective("decoder", tok, 96, generative=True, loss_chunk=5)
    objective.loss(model, objective.batch(EXAMPLES))
    assert (objective.layout, objective.loss_chunk) == ("packed", 5)


def test_a_head_whose_output_the_model_transforms_drops_the_chunks():
    model, tok = _tiny_gemma2()  # final logit soft-capping, applied after the head
    objective = make_objective("decoder", tok, 64, generative=True, loss_chunk=3)
    batch = objective.batch(EXAMPLES[:4])
    with pytest.warns(RuntimeWarning, match="in chunks .* did not match"):
        loss = objective.loss(model, batch)
    assert objective.loss_chunk == 0 and objective.layout == "packed"
    assert float(loss) == pytest.approx(float(target_nll(model, batch, "full")) / objective.target_count(batch), rel=1e-5)


def test_evaluation_in_chunks_gives_the_same_per_example_loss(lora_llama):
    model, tok = lora_llama
    whole = make_objective("decoder", tok, 96, generative=True)
    chunked = make_objective("decoder", tok, 96, generative=True, loss_chunk=4)
    with torch.no_grad():
        a = whole.target_nll_per_example(model.eval(), EXAMPLES)
        b = chunked.target_nll_per_example(model, EXAMPLES)
    model.train()
    assert [n for _, n in a] == [n for _, n in b]
    assert [x for x, _ in b] == pytest.approx([x for x, _ in a], rel=1e-6)
