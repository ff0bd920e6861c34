import pytest
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from raylsl.errors import ModelError
from raylsl.models import find_blocks, resolve_model


@pytest.mark.parametrize("model, path", [
    (lambda: LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=3, num_attention_heads=2)), "model.layers"),
    (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2)), "transformer.h"),
    (lambda: BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                  intermediate_size=32)), "encoder.layer"),
])
def test_block_discovery_across_architectures(model, path):
    found_path, blocks = find_blocks(model())
    assert (found_path, len(blocks)) == (path, 3)


def test_blocks_path_override_and_errors():
    model, _ = resolve_model("tiny-llama").load()
    assert find_blocks(model, "model.layers")[0] == "model.layers"
    with pytest.raises(ModelError, match="blocks_path 'model.nope' does not name"):
        find_blocks(model, "model.nope")


def test_model_without_blocks_is_a_clear_error():
    with pytest.raises(ModelError, match="cannot train architecture Sequential.*no nn.ModuleList.*blocks_path="):
        find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


def test_unknown_model_name():
    with pytest.raises(ModelError, match="unknown model 'smollm-135m'.*smollm2-135m"):
        resolve_model("smollm-135m")


def test_tiny_models_are_deterministic():
    a, _ = resolve_model("tiny-llama").load()
    b, _ = resolve_model("tiny-llama").load()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert (pa == pb).all(), name
    assert not any(p.requires_grad for p in a.parameters())
