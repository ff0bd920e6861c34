import torch

from raylsl.data import MCExample
from raylsl.models import resolve_model
from raylsl.objective import DecoderMC, EncoderMC, evaluate

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


def test_decoder_scores_match_hand_computation():
    model, tok = resolve_model("tiny-llama").load()
    obj = DecoderMC(tok, max_length=64)
    scores = obj.scores(model, obj.batch(EXAMPLES, train=False))
    for row, ex in enumerate(EXAMPLES):
        for col, choice in enumerate(ex.choices):
            ids, n_cont = obj.encode(ex.context, choice)
            # Continuation is " choice" (space-delimited, as lm-eval does); its tokens are the choice bytes.
            assert tok.decode(ids[-n_cont:]) == " " + choice
            hand = _hand_logprob(model, ids, n_cont)
            assert abs(float(scores["acc"][row, col]) - hand) < 1e-4
            assert abs(float(scores["acc_norm"][row, col]) - hand / len(choice.encode())) < 1e-4
        assert torch.isinf(scores["acc"][row, len(ex.choices):]).all()


def test_decoder_loss_is_answer_tokens_only():
    model, tok = resolve_model("tiny-llama").load()
    obj = DecoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES, train=True)
    hand = []
    for ex in EXAMPLES:
        ids, n_cont = obj.encode(ex.context, ex.choices[ex.label])
        hand.append((_hand_logprob(model, ids, n_cont), n_cont))
    expected = -sum(lp for lp, _ in hand) / sum(n for _, n in hand)
    assert abs(float(obj.loss(model, batch)) - expected) < 1e-5


def test_truncation_keeps_the_continuation():
    _, tok = resolve_model("tiny-llama").load()
    obj = DecoderMC(tok, max_length=16)
    ids, n_cont = obj.encode("x" * 100, "answer")
    assert len(ids) == 16 and tok.decode(ids[-n_cont:]) == " answer"


def test_evaluate_accuracy_matches_argmax():
    model, tok = resolve_model("tiny-llama").load()
    obj = DecoderMC(tok, max_length=64)
    scores = obj.scores(model, obj.batch(EXAMPLES, train=False))
    expected = sum(int(scores["acc"][i].argmax()) == ex.label for i, ex in enumerate(EXAMPLES)) / len(EXAMPLES)
    metrics = evaluate(model, obj, EXAMPLES, batch_size=2)  # batching must not change anything
    assert metrics["acc"] == expected and metrics["n"] == 3


def test_encoder_scores_each_pair_and_masks_missing_choices():
    model, tok = resolve_model("tiny-bert").load()
    obj = EncoderMC(tok, max_length=64)
    batch = obj.batch(EXAMPLES, train=False)
    logits = obj.scores(model, batch)["acc"]
    assert logits.shape == (3, 3) and torch.isinf(logits[1, 2]) and torch.isinf(logits[2, 2])
    single = obj.scores(model, obj.batch(EXAMPLES[:1], train=False))["acc"]
    torch.testing.assert_close(single[0], logits[0], atol=1e-5, rtol=1e-5)
    loss = obj.loss(model, batch)
    assert torch.isfinite(loss)
