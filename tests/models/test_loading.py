"""Loading the base as it trains: at its dtype (no fp32 copy cast afterwards), quantized, with an
attention kernel; and the one-line refusals of what a device cannot run."""

import json
from pathlib import Path

import pytest
import torch

from raylsl.cli import main
from raylsl.config import ModelSettings, load_config
from raylsl.errors import ConfigError
from raylsl.models import resolve_model
from raylsl.models.loading import load_options, resolve_dtype

CPU = torch.device("cpu")


def test_the_base_loads_at_its_dtype_and_is_never_cast(monkeypatch):
    """``from_pretrained`` gets the dtype; nothing calls ``.to(dtype)`` on the model afterwards."""
    casts = []
    original = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: casts.append((a, k)) or original(self, *a, **k))
    model, _ = resolve_model("tiny-llama").load(load_options(ModelSettings(dtype="bfloat16"), CPU))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not [c for c in casts if torch.bfloat16 in c[0] or c[1].get("dtype") is not None]


def test_auto_dtype_is_float32_on_a_cpu_and_bfloat16_for_a_gpu():
    assert resolve_dtype(ModelSettings(), CPU) == torch.float32
    if not torch.cuda.is_available():  # a GPU this process cannot see (a CPU head planning for workers)
        assert resolve_dtype(ModelSettings(), torch.device("cuda")) == torch.bfloat16
        assert resolve_dtype(ModelSettings(), torch.device("cuda"), precision="fp32") == torch.float32


def test_a_gpu_without_bfloat16_is_told_to_use_float16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ConfigError, match=r"model.dtype=bfloat16: this GPU \(Tesla V100\) cannot compute in "
                                          r"bfloat16; use model.dtype=float16 or float32"):
        resolve_dtype(ModelSettings(dtype="bfloat16"), torch.device("cuda"))
    assert resolve_dtype(ModelSettings(), torch.device("cuda")) == torch.float32  # auto falls back


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_attention_kernel_is_the_one_asked_for(kernel):
    model, _ = resolve_model("tiny-llama").load(load_options(ModelSettings(attn_implementation=kernel), CPU))
    assert model.config._attn_implementation == kernel


def test_flash_attention_where_it_cannot_run_is_one_line():
    with pytest.raises(ConfigError, match="model.attn_implementation=flash_attention_2: flash attention runs on "
                                          "CUDA GPUs only.*use model.attn_implementation=sdpa"):
        load_options(ModelSettings(attn_implementation="flash_attention_2"), CPU)


def test_quantization_without_bitsandbytes_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ConfigError, match=r"model.quantization=4bit needs bitsandbytes: pip install 'raylsl\[qlora\]'"):
        load_options(ModelSettings(dtype="bfloat16", quantization="4bit"), CPU)


def test_quantization_in_float32_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="model.quantization='4bit' computes in bfloat16 or float16"):
        load_config(None, ["model.quantization=4bit", "model.dtype=float32"])


def test_random_weights_are_seeded_and_need_only_the_config(tmp_path):
    from raylsl.models import ARCHITECTURES
    from tests.models.architecture_cases import tiny_config

    tiny_config(next(a for a in ARCHITECTURES if a.model_type == "qwen2")).save_pretrained(tmp_path)  # no weights
    spec = resolve_model(str(tmp_path))
    first, tokenizer = spec.load(load_options(ModelSettings(weights="random"), CPU))
    second, _ = spec.load(load_options(ModelSettings(weights="random"), CPU))
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(p, q), name
    assert len(tokenizer) == first.config.vocab_size  # no tokenizer there: the byte tokenizer stands in
    with pytest.raises(Exception, match="cannot load model"):
        spec.load()  # pretrained weights are not there


def _llama_in_blocks_of_64(target: Path) -> str:
    """tiny-llama's shape with every linear's sizes a multiple of 64, as every real model's are: on
    a CPU with AVX512-BF16, bitsandbytes (0.50) repacks 4-bit weights for evaluation in blocks of 64
    input features, and fails on tiny-llama's 32 (found on such a CI machine)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from raylsl.models.registry import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def test_a_qlora_run_trains_on_cpu_and_its_adapter_loads_on_the_unquantized_base(tiny_config, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from safetensors.torch import load_file

    from raylsl.recipes.train import train

    model = _llama_in_blocks_of_64(tmp_path / "llama64")
    config = tiny_config(**{"model": model, "model.quantization": "4bit", "model.dtype": "bfloat16",
                            "layers": "2-3", "train.steps": 8})
    results = train(config, progress=False)
    losses = [json.loads(line)["loss"] for line in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert results["adapted_blocks"] == [2, 3] and sum(losses[-3:]) < sum(losses[:3])
    adapter = Path(results["run_dir"]) / "adapter"
    trained = load_file(adapter / "adapter_model.safetensors")
    base, _ = resolve_model(model).load(load_options(ModelSettings(dtype="bfloat16"), CPU))
    reloaded = PeftModel.from_pretrained(base, adapter)  # plain peft, no bitsandbytes in the way
    state = {k.replace(".default", ""): v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert state.keys() == trained.keys()
    for key, value in trained.items():
        torch.testing.assert_close(state[key].float(), value.float(), rtol=0, atol=0)


def test_estimate_prints_the_default_and_shipped_configs_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["estimate", "model=llama-3.1-70b", "data.max_length=2048", "train.batch_size=1", "task.format=text",
                 "layers=60-79", "--gpus", "8", "--gpu-memory", "80GB"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-70b (llama, 80 blocks, 70.55B parameters)" in out and "ZeRO-3, 4-bit, selective ckpt" in out
    assert "configured run:" in out and "does not fit" in out and "cheapest change that fits:" in out
    assert main(["estimate", "model=meta-llama/Llama-3.1-8B", "--gpu-memory", "24GB", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["parameters"]["total"] == 8030261248 and isinstance(found["parameters"]["lora"], int)
    assert {"weights", "lora_parameters", "gradients", "optimizer_state", "activations", "lm_head"} <= \
        found["configured"]["terms"].keys()
    assert all(isinstance(v, int) for v in found["configured"]["terms"].values())


@pytest.mark.parametrize("argv, message", [
    (["estimate", "model=nobody/no-such-model"], "cannot read the config of model 'nobody/no-such-model'"),
    (["estimate", "--gpus", "4"], "--gpus counts GPUs, and this machine has none: give their memory too"),
    (["estimate", "--gpu-memory", "eighty"], "--gpu-memory='eighty' is not a memory size; write it like 80GB"),
])
def test_estimate_bad_input_is_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if torch.cuda.is_available() and "--gpus" in argv:
        pytest.skip("this machine has a GPU")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_train_refuses_a_run_that_cannot_fit_before_writing_anything(tmp_path, capsys, task_file):
    argv = ["train", "model=tiny-llama", f"task={task_file}", f"output_dir={tmp_path / 'runs'}", "lora.r=100000000",
            "data.test_size=16", "data.val_size=8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("raylsl: error: this run does not fit: it needs an estimated") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
