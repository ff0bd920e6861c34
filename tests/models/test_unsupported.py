"""What raylsl cannot handle as it is: one line naming the architecture and the ways out (exit 2,
nothing written), never a traceback nor a silent run without adapters; and a warning naming the
weights a run leaves unadapted."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import transformers
from torch import nn

from architecture_cases import LAYERS, tiny_config, tiny_model
from raylsl.cli import main
from raylsl.config import LoraSettings
from raylsl.errors import ConfigError, ModelError, RaylslWarning
from raylsl.lora import apply_lora, loose_weights
from raylsl.models import architecture, byte_tokenizer, find_blocks, resolve_model

WAYS_OUT = ("model.kind=decoder|encoder", "blocks_path=", "lora.target_modules=")


def _train(tmp_path, task_file, *overrides) -> int:
    return main(["train", f"task={task_file}", f"output_dir={tmp_path / 'runs'}", "data.test_size=16",
                 "data.val_size=8", *overrides])


def _one_line(capsys, *parts) -> str:
    err = capsys.readouterr().err
    assert err.startswith("raylsl: error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(part in err for part in parts), err
    return err


def test_a_family_with_neither_head_is_one_line(tmp_path, task_file, capsys):
    transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32).save_pretrained(tmp_path / "vit")
    assert _train(tmp_path, task_file, f"model={tmp_path / 'vit'}") == 2
    _one_line(capsys, "architecture 'vit' (ViTConfig)", "no causal-LM, multiple-choice or image-text-to-text class",
              *WAYS_OUT)
    assert not (tmp_path / "runs").exists()


def test_modernbert_is_an_encoder_and_a_wrong_kind_is_one_line(tmp_path, task_file, capsys):
    tiny_config(architecture("modernbert")).save_pretrained(tmp_path / "modernbert")
    assert resolve_model(str(tmp_path / "modernbert")).kind == "encoder"
    assert _train(tmp_path, task_file, f"model={tmp_path / 'modernbert'}", "model.kind=decoder") == 2
    _one_line(capsys, "'modernbert' (ModernBertConfig)", "model.kind=decoder asks for its causal-LM class", *WAYS_OUT)


def test_a_model_directory_without_a_tokenizer_is_one_line(tmp_path, task_file, capsys):
    tiny_model(architecture("llama")).save_pretrained(tmp_path / "llama")
    assert _train(tmp_path, task_file, f"model={tmp_path / 'llama'}") == 2
    _one_line(capsys, f"cannot load model '{tmp_path / 'llama'}'")


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return x @ self.mix


class _NoLinears(nn.Module):
    """Blocks whose weights are plain parameters: nothing LoRA can target by name."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(_Block() for _ in range(3))


def test_blocks_without_a_linear_layer_are_one_error_not_a_run_without_adapters():
    model = _NoLinears()
    path, blocks = find_blocks(model)
    with pytest.raises(ModelError, match="architecture _NoLinears.*hold no nn.Linear or Conv1D layer.*Ways out: "
                                         "set model.kind=.*blocks_path=.*lora.target_modules="):
        apply_lora(model, [1], LoraSettings(), path, blocks, "decoder")


def test_moe_experts_left_frozen_are_named_in_a_warning(tmp_path, task_file, capsys, monkeypatch):
    mixtral = architecture("mixtral")
    model = tiny_model(mixtral)
    path, blocks = find_blocks(model)
    with pytest.warns(RaylslWarning, match=r"'mixtral' \(MixtralConfig\): mlp.experts.down_proj, mlp.experts.gate_up_proj "
                                           r"\(88% of the adapted blocks' weights\) get no LoRA .* set lora.target_parameters="
                                           r"\[mlp.experts.down_proj,mlp.experts.gate_up_proj\] lora.dropout=0"):
        apply_lora(model, LAYERS, LoraSettings(), path, blocks, "decoder")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RaylslWarning)  # a dense model leaves nothing large behind
        llama = tiny_model(architecture("llama"))
        apply_lora(llama, LAYERS, LoraSettings(), *find_blocks(llama), "decoder")
    # The command line shows it as one line of its own, among library warnings it silences. (pytest
    # records warnings instead of showing them: show them as Python does outside pytest.)
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None, line=None:
                        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line)))
    model.save_pretrained(tmp_path / "mixtral")
    byte_tokenizer().save_pretrained(tmp_path / "mixtral")
    assert _train(tmp_path, task_file, f"model={tmp_path / 'mixtral'}", "layers=1,3", "--smoke", "--no-progress",
                  "eval_before=false") == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "get no LoRA" in line]
    assert len(notes) == 1 and notes[0].startswith("raylsl: 'mixtral'") and "Warning" not in err


def test_experts_partitioned_by_zero3_are_still_found():
    """Under ZeRO-3 a rank holds an empty partition of each weight; its full shape is ds_shape."""
    mixtral = architecture("mixtral")
    block = find_blocks(tiny_model(mixtral))[1][0]
    for param in block.parameters():
        param.ds_shape, param.data = param.shape, torch.empty(0)
    assert sorted(loose_weights(block, "mixtral")) == list(mixtral.experts)


@pytest.mark.parametrize("settings, message", [
    ({"target_parameters": ("mlp.experts.down_proj",)}, r"lora.dropout=0.05 must be 0 with lora.target_parameters"),
    ({"target_parameters": ("mlp.experts.up_proj",), "dropout": 0.0},
     r"lora.target_parameters: mlp.experts.up_proj is not a weight outside the linear layers of a block; those are: "
     r"mlp.experts.down_proj, mlp.experts.gate_up_proj"),
])
def test_target_parameters_mistakes_name_the_key(settings, message):
    model = tiny_model(architecture("mixtral"))
    with pytest.raises(ConfigError, match=message):
        apply_lora(model, LAYERS, LoraSettings(**settings), *find_blocks(model), "decoder")


def test_gpt2_conv1d_layers_are_targets_by_name():
    gpt2 = architecture("gpt2")
    model = tiny_model(gpt2)
    peft_model = apply_lora(model, LAYERS, LoraSettings(target_modules=("c_attn", "c_proj")), *find_blocks(model),
                            "decoder")
    adapted = {n.split(".lora_A")[0].split(".h.")[1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert adapted == {f"{i}.{m}" for i in LAYERS for m in ("attn.c_attn", "attn.c_proj", "mlp.c_proj")}
    model = tiny_model(gpt2)
    with pytest.raises(ConfigError, match="c_atn not found in a block; linear layers there are: c_attn, c_fc, c_proj"):
        apply_lora(model, LAYERS, LoraSettings(target_modules=("c_atn",)), *find_blocks(model), "decoder")
