import pytest
import torch
from torch import nn

from raylsl.config import LoraSettings
from raylsl.data import MCExample
from raylsl.lora import apply_lora
from raylsl.models import byte_tokenizer, find_blocks, resolve_model
from raylsl.objective import DecoderMC, EncoderMC, evaluate
from raylsl.objective.causal import choose_layout, make_tokens, packed, target_nll

EXAMPLES = [
    MCExample("The sky is", ("blue", "green", "loud"), 0),
    MCExample("A much longer context that will need padding on the others: answer", ("yes", "no"), 1),
    MCExample("2+2=", ("4", "five"), 0),
]


def _hand_logprob(model, ids: list[int], n_cont: int) -> float:
    """Sum of log p(token) over the last n_cont tokens, one unpadded sequence at a time."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n_cont, len(ids)))


@pytest.fixture(scope="module")
def llama():
    return resolve_model("tiny-llama").load()


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoder_choice_scores_match_hand_computation(llama, use_cache):
    model, tok = llama
    obj = DecoderMC(tok, max_length=64)
    scores = obj.choice_logprobs(model, EXAMPLES, use_cache=use_cache)
    for row, ex in enumerate(EXAMPLES):
        assert len(scores[row]) == len(ex.choices)
        for col, choice in enumerate(ex.choices):
            ids, n_cont = obj.encode(ex.context, choice)
            # Continuation is " choice" (space-delimited, as lm-eval does); its tokens are the choice bytes.
            assert tok.decode(ids[-n_cont:]) == " " + choice
            assert abs(scores[row][col] - _hand_logprob(model, ids, n_cont)) < 1e-4


def test_truncated_contexts_are_scored_per_choice(llama):
    """When truncation leaves choices with different contexts, each pair is scored alone."""
    model, tok = llama
    obj = DecoderMC(tok, max_length=16)
    ex = MCExample("x" * 40, ("a", "a much longer choice"), 0)
    scores = obj.choice_logprobs(model, [ex])[0]
    for col, choice in enumerate(ex.choices):
        ids, n_cont = obj.encode(ex.context, choice)
        assert len(ids) == 16 and abs(scores[col] - _hand_logprob(model, ids, n_cont)) < 1e-4


def test_cached_and_plain_scoring_give_identical_metrics(llama):
    model, tok = llama
    examples = [MCExample(f"Item {i}: " + "word " * (i % 7), ("yes", "no", "maybe not", "a b c d"), i % 4)
                for i in range(24)]
    fast, plain = DecoderMC(tok, 48), DecoderMC(tok, 48)
    plain.cached_scoring = False
    a, b = evaluate(model, fast, examples, batch_size=5), evaluate(model, plain, examples, batch_size=7)
    assert fast.cached_scoring is True
    assert a["acc"] == b["acc"] and a["acc_norm"] == b["acc_norm"] and a["n"] == b["n"] == 24
    assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["perplexity"] - b["perplexity"]) < 1e-4


def test_evaluate_metrics_match_hand_computation(llama):
    model, tok = llama
    obj = DecoderMC(tok, max_length=64)
    hand = [[_hand_logprob(model, *obj.encode(ex.context, c)) for c in ex.choices] for ex in EXAMPLES]
    acc = sum(max(range(len(h)), key=h.__getitem__) == ex.label for h, ex in zip(hand, EXAMPLES)) / 3
    normed = [[s / len(c.encode()) for s, c in zip(h, ex.choices)] for h, ex in zip(hand, EXAMPLES)]
    acc_norm = sum(max(range(len(h)), key=h.__getitem__) == ex.label for h, ex in zip(normed, EXAMPLES)) / 3
    nll = -sum(h[ex.label] for h, ex in zip(hand, EXAMPLES))
    tokens = sum(obj.encode(ex.context, ex.choices[ex.label])[1] for ex in EXAMPLES)
    metrics = evaluate(model, obj, EXAMPLES, batch_size=2)  # batching must not change anything
    assert metrics["acc"] == acc and metrics["acc_norm"] == acc_norm and metrics["n"] == 3
    assert abs(metrics["loss"] - nll / tokens) < 1e-5


def test_per_example_accuracy_is_in_the_callers_order(llama):
    """Evaluation sorts by length; the per-example record (for bootstrap intervals) must not."""
    model, tok = llama
    examples = [MCExample(f"Item {i}: " + "word " * (i * 5 % 11), ("yes", "no"), i % 2) for i in range(13)]
    obj = DecoderMC(tok, 64)
    metrics = evaluate(model, obj, examples, batch_size=4, per_example=True)
    alone = [evaluate(model, obj, [ex], batch_size=1)["acc"] for ex in examples]
    assert metrics["per_example"]["acc"] == alone
    assert sum(alone) / len(alone) == metrics["acc"]
    assert len(set(alone)) == 2  # both outcomes occur, so an order mix-up would show


@pytest.mark.parametrize("layout", ["packed", "padded", "full"])
def test_decoder_loss_is_answer_tokens_only_in_every_layout(llama, layout):
    model, tok = llama
    obj = DecoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES)
    hand = []
    for ex in EXAMPLES:
        ids, n_cont = obj.encode(ex.context, ex.choices[ex.label])
        hand.append((_hand_logprob(model, ids, n_cont), n_cont))
    expected = -sum(lp for lp, _ in hand) / sum(n for _, n in hand)
    obj.layout = layout
    assert abs(float(obj.loss(model, batch)) - expected) < 1e-5


def test_packing_fills_rows_without_splitting_sequences(monkeypatch):
    import raylsl.objective.causal as causal

    monkeypatch.setattr(causal, "PACK_WIDTH", 8)
    seqs = [make_tokens([([1] * n, False), ([2], True)], 64) for n in (9, 2, 5, 3, 1)]
    out = causal.packed(seqs, pad_id=0)
    assert out["packed_ids"].shape == (3, 10)  # 10 | 6+4 | 3+2: first fit decreasing into rows of max(10, 8)
    for row in range(3):
        starts = (out["packed_positions"][row] == 0).nonzero().flatten().tolist()
        assert not out["packed_targets"][row, starts].any()  # a sequence's first token is never a target
    assert int(out["packed_targets"].sum()) == 5 and int((out["packed_ids"] == 1).sum()) == 20


def _lora_everywhere(model):
    path, blocks = find_blocks(model)
    torch.manual_seed(0)
    peft_model = apply_lora(model, list(range(len(blocks))), LoraSettings(r=4, dropout=0.0), path, blocks, "decoder")
    with torch.no_grad():  # B = 0 at init would make every LoRA-A gradient zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return peft_model


def _grads(model, obj, batch, layout) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    obj.layout = layout
    obj.loss(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["base-weights", "lora-every-block"])
def test_fast_layouts_give_the_full_logits_gradient(lora):
    model, tok = resolve_model("tiny-llama").load()
    if lora:
        model = _lora_everywhere(model)
    else:
        for name, param in model.named_parameters():
            param.requires_grad_("layers" in name)
    obj = DecoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES * 2)
    reference = _grads(model, obj, batch, "full")
    assert reference and all(float(g.abs().max()) > 0 for g in reference.values())
    for layout in ("packed", "padded"):
        grads = _grads(model, obj, batch, layout)
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-6)


def _tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = byte_tokenizer()
    config = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, bos_token_id=None, final_logit_softcapping=3.0,
                          initializer_range=0.2, attn_implementation="eager")
    torch.manual_seed(0)
    return Gemma2ForCausalLM(config).eval(), tok


def test_soft_capped_head_keeps_its_capping_in_the_fast_layout():
    model, tok = _tiny_gemma2()
    obj = DecoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES)
    full = float(target_nll(model, batch, "full"))
    assert abs(float(target_nll(model, batch, "packed")) - full) < 1e-4 * abs(full)
    obj.loss(model, batch)
    assert obj.layout == "packed"


class _GlobalShift(nn.Module):
    """A head whose output depends on other positions (a temperature read off the first one): the
    head applied to the target rows alone cannot reproduce it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits / out.logits.flatten(0, -2)[0].std()
        return out


class _NoHead(_GlobalShift):
    def get_output_embeddings(self):
        return None

    def forward(self, **kwargs):
        return self.inner(**kwargs)


@pytest.mark.parametrize("wrapper", [_GlobalShift, _NoHead])
def test_heads_that_are_not_a_plain_linear_map_fall_back_to_full_logits(llama, wrapper):
    model, tok = llama
    wrapped = wrapper(model)
    obj = DecoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES)
    rng = torch.get_rng_state()
    with pytest.warns(RuntimeWarning, match="full layout"):
        loss = obj.loss(wrapped, batch)
    assert obj.layout == "full" and torch.equal(rng, torch.get_rng_state())
    assert abs(float(loss) - float(target_nll(wrapped, batch, "full")) / obj.target_count(batch)) < 1e-6


def test_choosing_the_layout_leaves_the_random_stream_alone(llama):
    model, tok = llama
    obj = DecoderMC(tok, max_length=64)
    sample = obj.batch(EXAMPLES)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert choose_layout(model.train(), sample) == ("packed", 0) and model.training
    assert torch.equal(torch.rand(3), expected)
    model.eval()


def test_truncation_keeps_the_continuation(llama):
    _, tok = llama
    obj = DecoderMC(tok, max_length=16)
    ids, n_cont = obj.encode("x" * 100, "answer")
    assert len(ids) == 16 and tok.decode(ids[-n_cont:]) == " answer"


def test_encoder_scores_each_pair_and_masks_missing_choices():
    model, tok = resolve_model("tiny-bert").load()
    obj = EncoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES)
    logits = obj.logits(model, batch)
    assert logits.shape == (3, 3) and torch.isinf(logits[1, 2]) and torch.isinf(logits[2, 2])
    single = obj.logits(model, obj.batch(EXAMPLES[:1]))
    torch.testing.assert_close(single[0], logits[0], atol=1e-5, rtol=1e-5)
    metrics = evaluate(model, obj, EXAMPLES, batch_size=2)
    expected_nll = float(torch.nn.functional.cross_entropy(logits, batch["labels"]))
    assert abs(metrics["loss"] - expected_nll) < 1e-5
    assert metrics["acc"] == float((logits.argmax(-1) == batch["labels"]).float().mean())
