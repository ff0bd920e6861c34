"""Generative tasks: the row formats, which tokens are targets, the held-out loss, a run end to end."""

import json
import math
from pathlib import Path

import pytest
import torch

from raylsl.config import TaskSettings
from raylsl.data import ALPACA_PROMPT, GenExample, read_examples
from raylsl.errors import ConfigError, DataError
from raylsl.models import DECODER, ENCODER, byte_tokenizer
from raylsl.objective import evaluate, make_objective
from raylsl.objective.causal import target_nll
from raylsl.objective.generative import DecoderLM

# ChatML, as SmolLM2-Instruct's tokenizer renders it (one template for the byte tokenizer)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WARM, COLD = ["red", "orange", "yellow"], ["blue", "green", "purple"]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def colour_rows(n: int = 120) -> list[dict]:
    """A learnable completion task: the warmth of a named colour."""
    colours = WARM + COLD
    return [{"prompt": f"Item {i} is {colours[i % 6]}. Warm or cold? ", "completion": "warm" if i % 6 < 3 else "cold"}
            for i in range(n)]


def test_each_format_is_found_from_its_fields(tmp_path):
    rows = {
        "completion": {"prompt": "2+2=", "completion": "4", "answer": 4},
        "alpaca": {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
        "chat": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        "text": {"text": "Once upon a time."},
    }
    for fmt, row in rows.items():
        (example,) = read_examples(TaskSettings(name=str(write_rows(tmp_path / f"{fmt}.jsonl", [row]))))
        assert isinstance(example, GenExample) and example.format == fmt
    (completion,) = read_examples(TaskSettings(name=str(tmp_path / "completion.jsonl")))
    assert (completion.prompt, completion.completion, completion.answer) == ("2+2=", "4", "4")
    (alpaca,) = read_examples(TaskSettings(name=str(tmp_path / "alpaca.jsonl")))
    assert alpaca.prompt == ("Below is an instruction that describes a task, paired with an input that provides further "
                             "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                             "Add the numbers.\n\n### Input:\n2 and 2\n\n### Response:\n")
    assert alpaca.completion == "4"
    no_input = {"instruction": "Say hi.", "output": "hi"}
    (plain,) = read_examples(TaskSettings(name=str(write_rows(tmp_path / "a2.jsonl", [no_input]))))
    assert plain.prompt == ALPACA_PROMPT.format(with_input="", instruction="Say hi.", input_block="")
    assert "### Input" not in plain.prompt
    # a forced format reads the same rows as that format, or says which field is missing
    with pytest.raises(DataError, match=r"a2.jsonl:1: missing field 'text' of a text row"):
        read_examples(TaskSettings(name=str(tmp_path / "a2.jsonl"), format="text"))


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "completion": "b"}, {"text": "c"}], r"bad.jsonl:2: missing field 'prompt' of a completion row"),
    ([{"question": "a", "reply": "b"}], r"bad.jsonl:1: cannot tell the row's format from its fields \['question', 'reply'\]"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"bad.jsonl:1: a chat row needs at least one 'assistant'"),
    ([{"messages": [{"role": "user"}]}], r"bad.jsonl:1: messages\[0\] must be"),
    ([{"prompt": "a", "completion": "b", "answer": [1]}], r"bad.jsonl:1: 'answer' must be a string or a number"),
])
def test_a_malformed_row_names_file_and_line(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_examples(TaskSettings(name=str(write_rows(tmp_path / "bad.jsonl", rows))))


def test_an_unknown_format_is_one_config_error():
    with pytest.raises(ConfigError, match="task.format='sharegpt' must be one of auto, mc, completion"):
        TaskSettings(format="sharegpt")


def _targets(objective: DecoderLM, example: GenExample) -> tuple[str, str]:
    """(every token's text, the target tokens' text), decoded."""
    tokens = objective.tokens(example)
    tok = objective.tokenizer
    return (tok.decode(list(tokens.ids)),
            tok.decode([i for i, t in zip(tokens.ids, tokens.targets) if t]))


def test_only_the_completion_and_its_end_of_sequence_are_targets():
    objective = DecoderLM(byte_tokenizer(), 64)
    every, targets = _targets(objective, GenExample("completion", prompt="Q: 2+2? A:", completion=" 4"))
    assert every == "Q: 2+2? A: 4<eos>" and targets == " 4<eos>"
    every, targets = _targets(objective, GenExample("text", text="abcd"))
    assert every == "abcd" and targets == "bcd"  # the first token has nothing to be predicted from
    # too long: the prompt loses tokens from the left, the targets stay whole
    every, targets = _targets(DecoderLM(byte_tokenizer(), 8), GenExample("completion", prompt="0123456789", completion="ab"))
    assert every == "56789ab<eos>" and targets == "ab<eos>"


def test_every_assistant_turn_is_a_target_with_its_end_of_turn():
    tok = byte_tokenizer()
    objective = DecoderLM(tok, 512, chat_template=CHATML)
    chat = GenExample("chat", messages=(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
                                        ("user", "Colour of sky?"), ("assistant", "Blue")))
    tokens = objective.tokens(chat)
    every = tok.decode(list(tokens.ids))
    assert every == tok.apply_chat_template([{"role": r, "content": c} for r, c in chat.messages],
                                            chat_template=CHATML, tokenize=False)
    spans, current = [], []
    for i, t in zip(tokens.ids, tokens.targets):
        if t:
            current.append(i)
        elif current:
            spans.append(tok.decode(current))
            current = []
    spans += [tok.decode(current)] if current else []
    assert spans == ["Hello<|im_end|>\n", "Blue<|im_end|>\n"]
    with pytest.raises(DataError, match="chat data needs a chat template: this model's tokenizer has none"):
        DecoderLM(tok, 512).tokens(chat)


@pytest.fixture(scope="module")
def tiny():
    from raylsl.models import resolve_model

    model, tokenizer = resolve_model("tiny-llama").load()
    return model.eval(), tokenizer


def test_held_out_loss_is_the_mean_nll_of_the_target_tokens(tiny):
    model, tokenizer = tiny
    objective = make_objective(DECODER, tokenizer, 64, generative=True)
    examples = [GenExample("completion", prompt=r["prompt"], completion=r["completion"]) for r in colour_rows(10)]
    examples.append(GenExample("text", text="a short text"))
    metrics = evaluate(model, objective, examples, batch_size=4, per_example=True)
    # by hand: each sequence alone, full logits, log-softmax at the positions before targets
    nll, count, each = 0.0, 0, []
    for ex in examples:
        tokens = objective.tokens(ex)
        ids = torch.tensor([tokens.ids])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
        picked = [-float(logprobs[t - 1, ids[0, t]]) for t in range(1, len(tokens.ids)) if tokens.targets[t]]
        nll, count = nll + sum(picked), count + len(picked)
        each.append(sum(picked) / len(picked))
    assert metrics["n"] == len(examples)
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metrics["per_example"]["loss"] == pytest.approx(each, rel=1e-5)
    # the training loss is the same quantity, in the fast layout and the plain one
    batch = objective.batch(examples)
    full = float(target_nll(model, batch, "full")) / objective.target_count(batch)
    assert float(objective.loss(model, batch)) == pytest.approx(full, rel=1e-5) == pytest.approx(nll / count, rel=1e-5)


def test_generative_data_needs_a_decoder():
    with pytest.raises(ConfigError, match="generative tasks .* train a decoder; this model is an encoder"):
        make_objective(ENCODER, byte_tokenizer(encoder=True), 64, generative=True)


def test_training_on_completions_lowers_the_held_out_loss(tiny_config, tmp_path):
    from raylsl.recipes import train as recipe

    task = write_rows(tmp_path / "colours.jsonl", colour_rows())
    results = recipe.train(tiny_config(task__name=str(task), train__steps=12, layers="all", train__eval_every=6),
                           progress=False)
    before, after = results["before"], results["after"]
    assert set(after) == {"loss", "perplexity", "n"} and after["n"] == 32
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    steps = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "val_loss" in m] == [6]


def test_a_model_trained_to_echo_a_fixed_answer_gets_every_exact_match_and_eval_samples_show_it(tiny_config, tmp_path):
    """Every completion is `#### 7`: a few steps teach the tiny model to write it, so exact match
    reaches 1.0 from (nearly) 0, and `raylsl eval RUN --samples N` writes N rows to the run, each with
    the generation, its extracted answer and the reference, all correct."""
    from raylsl.recipes import train as recipe
    from raylsl.recipes.evaluate import evaluate_target

    rows = [{"prompt": f"Question {i}: what is the number?", "completion": " #### 7"} for i in range(120)]
    task = write_rows(tmp_path / "sevens.jsonl", rows)
    results = recipe.train(tiny_config(task__name=str(task), layers="all", train__steps=30, train__lr=2e-2,
                                       task__max_new_tokens=8), progress=False)
    assert results["before"]["exact_match"] < 0.5 and results["after"]["exact_match"] == 1.0, results["after"]
    out = evaluate_target(results["run_dir"], [], "test", samples=5)
    path = Path(results["run_dir"]) / "samples_test.jsonl"
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert out["samples"] == str(path) and out["exact_match"] == 1.0 and len(written) == 5
    assert all(r["correct"] and r["answer"] == "7" == r["reference"] and "what is the number?" in r["prompt"]
               for r in written), written
    with pytest.raises(ConfigError, match="--samples shows generated answers; task .* is multiple choice"):
        evaluate_target(results["run_dir"], [f"task.name={tiny_config().task.name}"], "test", samples=2)


def test_generated_arithmetic_is_deterministic_distinct_and_self_consistent():
    pytest.importorskip("reasoning_gym")
    from raylsl.config import DataSettings
    from raylsl.data import GENERATED_SIZE, load_task
    from raylsl.objective.generative import normalize, reference_answer

    examples = read_examples(TaskSettings(name="arithmetic"), DataSettings())
    assert len(examples) == GENERATED_SIZE and examples == read_examples(TaskSettings(name="arithmetic"), DataSettings())
    questions = [ex.messages[0][1] for ex in examples]
    assert len(set(questions)) == len(questions)  # no problem in both train and test
    for ex in examples[:200]:
        (role, question), (_, solution) = ex.messages
        expression = question.rsplit(":", 1)[1].strip(" =")
        assert role == "user" and normalize(ex.answer) == normalize(str(eval(expression)))  # noqa: S307 (digits, + and -)
        assert reference_answer(GenExample("chat", messages=ex.messages)) == ex.answer  # the solution ends in #### N
    # the test split does not move when the training set is capped
    full, capped = (load_task(TaskSettings(name="arithmetic"), DataSettings(train_size=size)) for size in (None, 100))
    assert full.test == capped.test and len(capped.train) == 100
    completion = read_examples(TaskSettings(name="arithmetic", format="completion"), DataSettings())[0]
    assert completion.prompt == f"Question: {questions[0]}\nAnswer:" and completion.completion.endswith(f"#### {examples[0].answer}")
    gsm = read_examples(TaskSettings(name="gsm_symbolic"), DataSettings(test_size=10, val_size=10))
    assert all(normalize(reference_answer(GenExample("chat", messages=ex.messages))) == normalize(ex.answer)
               for ex in gsm[:300])  # its solutions' "#### 8.0" is the answer "8"


def test_generated_tasks_without_reasoning_gym_say_how_to_install_it(monkeypatch):
    import sys

    from raylsl.config import DataSettings

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(DataError, match=r"pip install 'raylsl\[math\]'"):
        read_examples(TaskSettings(name="arithmetic"), DataSettings())
    with pytest.raises(DataError, match="unknown task 'arithmetc'. Use one of arithmetic, gsm_symbolic, quartz"):
        read_examples(TaskSettings(name="arithmetc"), DataSettings())


def test_cka_pools_generative_rows_over_all_their_tokens():
    """A chat row ends in the template's end-of-turn marker, the same token in every sample: under
    last-token pooling block 0's input has no variance and CKA is undefined."""
    from raylsl.objective.multiple_choice import DecoderMC
    from raylsl.selectors.cka import default_pooling

    assert default_pooling(DecoderLM(byte_tokenizer(), 64)) == "mean"
    assert default_pooling(DecoderMC(byte_tokenizer(), 64)) == "last"
    assert default_pooling(make_objective(ENCODER, byte_tokenizer(encoder=True), 64)) == "cls"


@pytest.mark.parametrize("selector", ["cka", "activation", "gradient"])
def test_selectors_score_generative_data(selector):
    import raylsl

    examples = [GenExample("completion", prompt=r["prompt"], completion=r["completion"]) for r in colour_rows(40)]
    chosen = raylsl.select_layers("tiny-llama", examples, selector=selector, n=2, calibration_size=16)
    assert len(chosen.layers) == 2 and len(chosen.scores.scores) == 4
    assert all(math.isfinite(s) for s in chosen.scores.scores)


@pytest.mark.parametrize("text, pattern, expected", [
    ("She has 3 apples, then 4 more.\n#### 7", None, "7"),
    ("The answer is 1,234 dollars", None, "1,234"),
    ("no number here", None, None),
    ("Answer: (B) because", r"\(([A-D])\)", "B"),
    ("#### 7 but pattern given", r"Answer: (\d+)", None),  # a given pattern replaces GSM8K's
])
def test_answers_are_extracted_like_gsm8k(text, pattern, expected):
    from raylsl.objective.generative import extract_answer

    assert extract_answer(text, pattern) == expected


@pytest.mark.parametrize("a, b, same", [
    ("42", "42.0", True), ("1,000", "1000", True), ("$5", "5", True), (" Paris. ", "paris", True),
    ("new  york", "New York", True), ("42", "43", False), ("0.5", ".5", False), ("3.10", "3.1", True),
])
def test_normalisation(a, b, same):
    from raylsl.objective.generative import normalize

    assert (normalize(a) == normalize(b)) is same


def test_greedy_generation_and_exact_match(tiny):
    model, tokenizer = tiny
    objective = DecoderLM(tokenizer, 64, max_new_tokens=6)
    prompts = ["Item 1 is red. ", "Q: ", "A much longer prompt than the others: "]
    # by hand: one sequence at a time, no padding, no cache, argmax until 6 tokens or <eos>
    expected = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new = []
        for _ in range(6):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
        expected.append(tokenizer.decode(new, skip_special_tokens=True))
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert objective.generate(model, ids) == expected  # batched, left-padded, KV cache: the same text
    # exact match, with the whole continuation as the answer: references equal to what the model
    # writes for the first two prompts (as a person would type them: other case, outer spaces),
    # another text for the third; a text row has no reference and is not counted
    whole = DecoderLM(tokenizer, 64, max_new_tokens=6, answer_pattern=r"(?s)(.*)")
    references = [f"  {expected[0].upper()} ", expected[1], expected[2] + "#not generated"]
    examples = [GenExample("completion", prompt=p, completion="x", answer=r) for p, r in zip(prompts, references)]
    metrics = evaluate(model, whole, examples + [GenExample("text", text="no reference")], batch_size=8)
    same_when_upper = expected[0].upper().lower() == expected[0].lower()  # byte garbage may not round-trip case
    assert metrics["exact_match"] == pytest.approx((1 + same_when_upper) / 3)
    # stop strings cut what is generated
    cut = DecoderLM(tokenizer, 64, max_new_tokens=6, stop=(expected[0][2:3],) if len(expected[0]) > 2 else ())
    if cut.stop:
        assert cut.generate(model, ids[:1])[0] == expected[0][: expected[0].find(cut.stop[0])]


def test_references_come_from_the_answer_field_or_the_completion():
    objective = DecoderLM(byte_tokenizer(), 64)
    assert objective.reference(GenExample("completion", prompt="q", completion="so 5\n#### 5", answer="6")) == "6"
    assert objective.reference(GenExample("completion", prompt="q", completion="so 5\n#### 5")) == "5"
    assert objective.reference(GenExample("completion", prompt="q", completion="warm")) is None  # no GSM8K answer
    chat = GenExample("chat", messages=(("user", "2+2?"), ("assistant", "It is 4.\n#### 4")))
    assert objective.reference(chat) == "4"


@pytest.mark.parametrize("selector, options", [
    ("ist", {"ist.n_update": 2, "ist.interval": 3, "ist.probe_batch_size": 4}),
    ("lisa", {"lisa.n_active": 2, "lisa.interval": 4}),
    ("flexora", {"n": 2, "flexora.search_steps": 3, "flexora.val_batches": 2}),
], ids=["ist", "lisa", "flexora"])
def test_dynamic_selectors_train_on_generative_rows(tiny_config, tmp_path, selector, options):
    """IST's probes, LISA's resampling and Flexora's search all run on the generative objective (the
    target-token loss), train 2 of the 4 blocks, and lower the held-out loss."""
    from raylsl.recipes import train as recipe

    task = write_rows(tmp_path / "colours.jsonl", colour_rows())
    results = recipe.train(tiny_config(task__name=str(task), train__steps=12, selector=selector, layers="all",
                                       **{k.replace(".", "__"): v for k, v in options.items()}), progress=False)
    before, after = results["before"], results["after"]
    assert set(after) == {"loss", "perplexity", "n"}
    # 0.65 (flexora) to 0.73 (ist) here; adapters that never train leave it at 1
    assert after["loss"] < 0.85 * before["loss"], (before, after)
    steps = [json.loads(line) for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    if selector == "flexora":
        assert len(results["layers"]) == 2 and results["selection_time_s"] > 0
    else:
        assert all(len(m["active_blocks"]) == 2 for m in steps if "active_blocks" in m)
        assert len({tuple(m["active_blocks"]) for m in steps if "active_blocks" in m}) > 1  # it moved
    if selector == "ist":  # the probes measured the generative loss with blocks suppressed
        assert any(v != 0 for v in results["dynamic"]["final_importance"])
