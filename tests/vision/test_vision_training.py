"""A tiny LLaVA-style model (Llama blocks, a CLIP vision tower) trained with ``raylsl train`` on
image+text chat rows, CKA choosing half of its language blocks from image+text calibration data;
multiple-choice rows with an image scored by choice log-likelihood; the exports reloaded."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file
from vision_cases import vision_config

from raylsl.config import TaskSettings
from raylsl.data import read_examples
from raylsl.errors import ConfigError, DataError
from raylsl.models import VLM, block_index, resolve_model
from raylsl.models.vision import image_inputs
from raylsl.objective import evaluate, make_objective
from raylsl.plan import build_plan
from raylsl.recipes import train as recipe
from raylsl.recipes.export import export_run

LANGUAGE_BLOCKS = "model.language_model.layers"
VISION_BLOCKS = "model.vision_tower.encoder.layers"
TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def trained(colours, tmp_path_factory):
    """``raylsl train`` on the chat rows: CKA keeps 2 of the 4 language blocks, 24 steps."""
    config = vision_config(colours[0], tmp_path_factory.mktemp("runs"), selector="cka", n=0.5, name="cka")
    return config, recipe.train(config, progress=False)


def test_held_out_loss_falls_below_four_fifths_and_generation_reads_the_image(trained):
    _, results = trained
    assert results["after"]["loss"] < 0.8 * results["before"]["loss"], (results["before"], results["after"])
    assert results["after"]["exact_match"] >= results["before"]["exact_match"]  # generated with the images


def test_adapters_sit_on_exactly_the_chosen_language_blocks(trained):
    _, results = trained
    chosen = json.loads((results_dir(results) / "scores.json").read_text())["layers"]
    assert len(chosen) == 2 and results["adapted_blocks"] == chosen
    weights = load_file(results_dir(results) / "adapter" / "adapter_model.safetensors")
    inside = block_index(LANGUAGE_BLOCKS)
    assert all(inside.search(key) for key in weights)  # nothing in the vision tower or the projector
    assert sorted({int(inside.search(key)[1]) for key in weights}) == chosen
    config = json.loads((results_dir(results) / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == TARGETS and config["layers_pattern"] == "language_model.layers"
    # The adapters are all that trains: r x (fan_in + fan_out) over a block's 7 projections, per block.
    assert results["params"]["head"] == 0 and results["params"]["adapter"] == 8 * 512 * 2


def test_cka_scores_image_text_calibration_once_and_keys_on_the_images(trained, colours, tmp_path):
    config, results = trained
    scored = json.loads((results_dir(results) / "scores.json").read_text())
    assert scored["scores"]["method"] == "cka" and len(scored["scores"]["scores"]) == 4 and not scored["cached"]
    again, _ = build_plan(config, "again", "", fit=False)
    assert again.selection.cached and list(again.layers) == scored["layers"]
    assert list(again.selection.scores.scores) == scored["scores"]["scores"]
    data = tmp_path / "repainted"
    (data / "img").mkdir(parents=True)
    (data / "chat.jsonl").write_text(colours[0].read_text())
    for image in (colours[0].parent / "img").iterdir():  # the same rows, every square a shade lighter
        Image.open(image).point(lambda v: min(v + 1, 255)).save(data / "img" / image.name)
    repainted, _ = build_plan(vision_config(data / "chat.jsonl", tmp_path, selector="cka", n=0.5), "x", "", fit=False)
    assert not repainted.selection.cached


def test_multiple_choice_rows_with_an_image_are_scored_by_choice_log_likelihood(colours):
    model, processor = resolve_model("tiny-llava").load()
    examples = read_examples(TaskSettings(name=str(colours[1]), context_field="question", label_field="answer"))[:6]
    objective = make_objective(VLM, processor, 128)
    scores = objective.choice_logprobs(model, examples)
    plain = [[_full_logits_logprob(model, processor, ex, choice) for choice in ex.choices] for ex in examples]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(plain), atol=1e-4, rtol=0)
    metrics = evaluate(model, objective, examples, 4, per_example=True)
    assert metrics["per_example"]["acc"] == [float(max(range(4), key=lambda c: (p[c], -c)) == ex.label)
                                             for ex, p in zip(examples, plain)]


def _full_logits_logprob(model, processor, example, choice: str) -> float:
    """log p(choice | image, question), the plain way: the processor on the whole text, full logits."""
    from raylsl.images import decode

    prompt = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": example.context}]}], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt + " " + choice], images=[[decode(example.images[0])]], add_special_tokens=False,
                       return_tensors="pt")
    n = len(processor.tokenizer(" " + choice, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**inputs).logits[0, :-1].float(), -1)
    ids = inputs["input_ids"][0, 1:]
    return float(logprobs[-n:].gather(-1, ids[-n:, None]).sum())


def test_image_tokens_that_do_not_fit_name_the_length_needed(colours):
    _, processor = resolve_model("tiny-llava").load()
    example = read_examples(TaskSettings(name=str(colours[0])))[0]
    with pytest.raises(DataError, match=r"needs \d+ tokens, 4 of them for its image.*raise data.max_length to \d+"):
        make_objective(VLM, processor, 8, generative=True).tokens(example)


def test_blocks_path_may_name_the_vision_towers_blocks(colours, tmp_path):
    """LoRA on the vision tower: its last block is never read (LLaVA's vision_feature_layer=-2),
    so a selector skips it and layers= naming it is one error."""
    config = vision_config(colours[0], tmp_path, blocks_path=VISION_BLOCKS, selector="gradient", n=1, name="tower",
                           eval_before=False, **{"train.steps": 2})
    results = recipe.train(config, progress=False)
    assert results["adapted_blocks"] == [0]
    weights = load_file(results_dir(results) / "adapter" / "adapter_model.safetensors")
    assert weights and all(block_index(VISION_BLOCKS).search(key)[1] == "0" for key in weights)
    with pytest.raises(ConfigError, match=r"blocks \[1\] of model.vision_tower.encoder.layers do not feed the"):
        build_plan(vision_config(colours[0], tmp_path, blocks_path=VISION_BLOCKS, layers="1"), "x", "", fit=False)


def test_exported_adapters_reload_with_the_same_logits(trained, colours, tmp_path):
    _, results = trained
    run = results_dir(results)
    base, processor = resolve_model("tiny-llava").load()
    examples = read_examples(TaskSettings(name=str(colours[0])))[:4]
    batch = make_objective(VLM, processor, 128, generative=True).batch(examples)
    trained_logits = _logits(PeftModel.from_pretrained(base, run / "adapter"), batch)
    merged = export_run(run, "merged", tmp_path / "merged")
    model = transformers.AutoModelForImageTextToText.from_pretrained(merged)
    reloaded = transformers.AutoProcessor.from_pretrained(merged)  # the processor travels with the weights
    merged_batch = make_objective(VLM, reloaded, 128, generative=True).batch(examples)
    torch.testing.assert_close(_logits(model, merged_batch), trained_logits, atol=1e-5, rtol=0)
    peft = export_run(run, "peft", tmp_path / "peft")
    fresh, _ = resolve_model("tiny-llava").load()
    reloaded_peft = PeftModel.from_pretrained(fresh, peft)
    torch.testing.assert_close(_logits(reloaded_peft, batch), trained_logits, atol=1e-5, rtol=0)


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **image_inputs(batch)}
    return model.eval()(**inputs).logits


def results_dir(results):
    from pathlib import Path

    return Path(results["run_dir"])
