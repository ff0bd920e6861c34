import pytest
import torch
from torch import nn

from raylsl.config import LoraSettings
from raylsl.errors import ConfigError
from raylsl.lora import adapted_blocks, apply_lora, count_trainable, parse_layers
from raylsl.models import find_blocks, resolve_model


def _lora(model_name: str, layers: list[int], **settings):
    model, _ = resolve_model(model_name).load()
    path, blocks = find_blocks(model)
    return apply_lora(model, layers, LoraSettings(**settings), path, blocks,
                      resolve_model(model_name).kind), path


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("layers", [[0], [1, 3], [0, 1, 2, 3]])
def test_adapters_exist_only_in_requested_blocks(model_name, layers):
    model, path = _lora(model_name, layers, r=4)
    assert adapted_blocks(model, path) == layers
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    # Nothing outside the block list (embeddings, pooler, lm head) carries an adapter.
    assert all(f".{path.rsplit('.', 1)[-1]}." in n for n in lora_names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} <= {n for n in trainable if "classifier" in n}


def test_trainable_count_matches_hand_count():
    # tiny-llama: hidden 32, intermediate 64, 4 heads of 8, 2 kv heads -> k/v project to 16.
    shapes = {"q": (32, 32), "k": (32, 16), "v": (32, 16), "o": (32, 32),
              "gate": (32, 64), "up": (32, 64), "down": (64, 32)}
    r, layers = 4, [1, 2]
    per_block = sum(r * (fan_in + fan_out) for fan_in, fan_out in shapes.values())
    model, _ = _lora("tiny-llama", layers, r=r)
    assert count_trainable(model)["adapter"] == per_block * len(layers) == 4096
    assert count_trainable(model)["head"] == 0


def test_encoder_head_counted_apart():
    model, _ = _lora("tiny-bert", [0], r=2)
    counts = count_trainable(model)
    assert counts["head"] == 32 + 1  # Linear(hidden=32 -> 1) scores each (context, choice) pair
    assert counts["trainable"] == counts["adapter"] + counts["head"]


def test_target_modules_restrict_adapted_linears():
    model, _ = _lora("tiny-llama", [0], r=2, target_modules=("q_proj", "v_proj"))
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_" in n}
    assert names == {"q_proj", "v_proj"}


def test_unknown_target_module_is_named():
    with pytest.raises(ConfigError, match="qq_proj not found in a block"):
        _lora("tiny-llama", [0], target_modules=("qq_proj",))


@pytest.mark.parametrize("spec, expected", [
    ("all", [0, 1, 2, 3, 4, 5]), ("2-4", [2, 3, 4]), ("0,3,5", [0, 3, 5]), ("0-1,4", [0, 1, 4]),
    ("5", [5]), (" 3 , 1 ", [1, 3]),
])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize("spec, message", [
    ("6", "block 6 is out of range; this model has 6 blocks"), ("4-2", "range 4-2 is empty"),
    ("", "selects no block"), ("first", "not an index or a range"), ("1-x", "not an index"),
])
def test_parse_layers_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_layers(spec, 6)


def test_lora_output_is_identity_at_init():
    """B = 0 at init: the adapted model computes exactly what the base model computes."""
    base, _ = resolve_model("tiny-llama").load()
    ids = torch.randint(3, 200, (2, 10))
    expected = base(input_ids=ids).logits
    model, _ = _lora("tiny-llama", [0, 2], r=4)
    torch.testing.assert_close(model(input_ids=ids).logits, expected)


def test_lora_dropout_keeps_its_distribution():
    from raylsl.lora import UniformDropout

    model, _ = resolve_model("tiny-llama").load()
    path, blocks = find_blocks(model)
    peft_model = apply_lora(model, [0], LoraSettings(r=2, dropout=0.25), path, blocks, "decoder")
    dropouts = [d for m in peft_model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
                for d in m.lora_dropout.values()]
    assert dropouts and all(isinstance(d, UniformDropout) and d.p == 0.25 for d in dropouts)
    drop = dropouts[0].train()
    x = torch.ones(400_000)
    out = drop(x)
    kept = out != 0
    # 400k Bernoulli(0.75) draws: the kept fraction's standard error is 7e-4, 5 sigma = 3.5e-3.
    assert abs(float(kept.float().mean()) - 0.75) < 3.5e-3
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert torch.equal(drop.eval()(x), x)
