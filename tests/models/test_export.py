"""``raylsl export`` on real runs: from the command line after ``raylsl train`` (GPT-2's Conv1D and
Phi-3's fused projections, adapters on exactly the chosen blocks), from a run's storage URI, and
never half-written. Each form's logits on every family: tests/models/test_architectures.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

from architecture_cases import tiny_model
from raylsl.cli import main
from raylsl.errors import ConfigError
from raylsl.export import export_adapter
from raylsl.models import architecture, byte_tokenizer, resolve_model
from raylsl.recipes.export import export_run


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_train_then_export_every_form_from_the_command_line(model_type, tmp_path, task_file, capsys):
    arch = architecture(model_type)
    base = tmp_path / model_type
    tiny_model(arch).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    assert main(["train", f"model={base}", f"task={task_file}", "layers=2-3", "--smoke", "--no-progress",
                 "eval_before=false", f"output_dir={tmp_path / 'runs'}", "name=run"]) == 0
    run = tmp_path / "runs" / "run"
    assert json.loads((run / "results.json").read_text())["adapted_blocks"] == [2, 3]
    saved = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {key.split(".layers." if model_type == "phi3" else ".h.")[1].split(".")[0] for key in saved} == {"2", "3"}
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["target_modules"] == list(arch.targets)
    capsys.readouterr()
    for form in ("peft", "padded", "merged"):
        assert main(["export", str(run), "--format", form]) == 0
        assert capsys.readouterr().out.strip() == str(run / "export" / form)
    padded = load_file(run / "export" / "padded" / "adapter_model.safetensors")
    assert len(padded) == 2 * len(saved) and all(torch.equal(padded[k], v) for k, v in saved.items())
    ids = torch.randint(3, 200, (2, 12))
    trained = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), run / "adapter").eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(run / "export" / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_export_reads_a_run_from_its_storage_uri(tiny_config, monkeypatch, tmp_path):
    from raylsl.recipes import train as recipe
    from tests.distributed.two_node import S3Server

    s3 = S3Server(tmp_path)
    try:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        config = tiny_config(name="s3run", layers="1,3", train__steps=2, eval_before=False, storage="s3://raylsl/runs")
        recipe.train(config, progress=False)
        shutil.rmtree(f"{config.output_dir}/s3run")  # only the bucket has the run
        uri = "s3://raylsl/runs/s3run"
        assert export_run(uri, "padded") == f"{uri}/export/padded"
        assert {"runs/s3run/export/padded/adapter_config.json",
                "runs/s3run/export/padded/adapter_model.safetensors"} <= set(s3.keys("runs/s3run/export/"))
        with pytest.raises(ConfigError, match=f"{uri}/export/padded already exists"):
            export_run(uri, "padded")
        local = export_run(uri, "merged", tmp_path / "merged")
        assert transformers.AutoModelForCausalLM.from_pretrained(local).config.model_type == "llama"
    finally:
        s3.stop()


def test_an_export_is_whole_or_absent(tiny_config, tmp_path, monkeypatch, capsys):
    from raylsl.recipes import train as recipe

    run = Path(recipe.train(tiny_config(name="r", layers="0", train__steps=1, eval_before=False), progress=False)["run_dir"])
    spec = resolve_model("tiny-llama")

    def broken(adapter, out, *args):
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr("raylsl.export._write_merged", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_adapter(run / "adapter", "merged", tmp_path / "out", spec)
    assert not list(tmp_path.glob("*out*"))  # neither the destination nor its staging directory
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="taken already exists and is not an empty directory"):
        export_adapter(run / "adapter", "peft", tmp_path / "taken", spec)
    for args, message in [(["--format", "gguf"], "--format 'gguf': choose one of peft, padded, merged"),
                          (["--format", "peft"], None)]:
        assert main(["export", str(tmp_path / "taken"), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert message in err if message else "holds no finished adapter" in err


def test_the_peft_form_writes_target_lists_sorted(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "target_modules": ["v_proj", "q_proj", "down_proj"], "r": 2}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    out = export_adapter(adapter, "peft", tmp_path / "out", resolve_model("tiny-llama"))
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"


def test_merged_keeps_the_base_checkpoint_dtype(tmp_path):
    from raylsl.config import LoraSettings
    from raylsl.lora import apply_lora
    from raylsl.models import find_blocks

    llama = architecture("llama")
    tiny_model(llama).to(torch.bfloat16).save_pretrained(tmp_path / "base")
    byte_tokenizer().save_pretrained(tmp_path / "base")
    model = tiny_model(llama)
    apply_lora(model, [1], LoraSettings(r=2), *find_blocks(model), "decoder").save_pretrained(tmp_path / "adapter")
    out = export_adapter(tmp_path / "adapter", "merged", tmp_path / "merged", resolve_model(str(tmp_path / "base")))
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
