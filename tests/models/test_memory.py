"""The memory estimate: its step trace against a real step, its model-state terms against loaded
models, its bound, and the fit check that uses it."""

import pytest
import torch

from raylsl.config import LoraSettings, load_config
from raylsl.fit import GIB, Device, DoesNotFit, check_fit, estimate, quick_bound
from raylsl.lora import apply_lora, count_trainable
from raylsl.models import find_blocks, resolve_model
from raylsl.models.loading import LoadOptions
from raylsl.models.memory import LiveBytes, trace_step, weight_bytes

def _lora(model, layers):
    path, blocks = find_blocks(model)
    return apply_lora(model, layers, LoraSettings(r=4, dropout=0.1), path, blocks, "decoder"), blocks


def test_live_bytes_counts_new_storages_once_and_frees_them():
    x = torch.randn(256, 256)
    with LiveBytes() as live:
        y = x @ x  # 256 KiB
        view = y.t()  # no new memory
        z = y + 1
        del y, view
        w = x.t()  # a view of memory from before: not counted
    assert live.peak == 2 * 256 * 256 * 4 and live.live == 256 * 256 * 4
    del z, w


@pytest.mark.parametrize("layers, checkpointing", [([2, 3], False), ([1, 3], True), ([0, 1, 2, 3], False)])
def test_meta_step_measures_what_a_real_cpu_step_allocates(layers, checkpointing):
    """The estimate's step on meta tensors, with the CPU's attention kernel stood in, against the
    same step on the CPU: every byte the same."""
    from raylsl.models.checkpointing import checkpoint_blocks

    spec = resolve_model("tiny-llama")
    real, _ = spec.load()
    real, real_blocks = _lora(real, layers)
    meta = spec.skeleton()
    meta, meta_blocks = _lora(meta, layers)
    if checkpointing:
        checkpoint_blocks(real_blocks, min(layers))
        checkpoint_blocks(meta_blocks, min(layers))
    for targets, chunk in ((0, 0), (40, 0), (40, 16)):
        on_cpu = trace_step(real, 4, 24, targets, loss_chunk=chunk, sdpa="none")
        on_meta = trace_step(meta, 4, 24, targets, loss_chunk=chunk, sdpa="cpu")
        assert on_meta == on_cpu > 0, (targets, chunk)


def test_checkpointing_and_chunks_lower_the_traced_peak_of_a_big_vocabulary():
    config = load_config(None, ["model=llama-3.2-1b", "data.max_length=1024", "train.batch_size=2",
                                "task.format=text", "layers=8-15"])
    gpu = Device("cuda", 80 * 10**9)
    plain = estimate(config, gpu, table=False).configured.terms
    levers = estimate(load_config(None, ["model=llama-3.2-1b", "data.max_length=1024", "train.batch_size=2",
                                         "task.format=text", "layers=8-15", "train.activation_checkpointing=on",
                                         "train.loss_chunk=256"]), gpu, table=False).configured.terms
    # 2048 targets x 128,256 vocabulary: the logits alone are 0.5 GB in bf16, 1 GB in fp32
    assert plain["lm_head"] > 2048 * 128256 * 6 and levers["lm_head"] < plain["lm_head"] / 6
    assert levers["activations"] < plain["activations"] / 3
    assert levers["weights"] == plain["weights"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_and_trainable_terms_are_the_loaded_models(dtype):
    config = load_config(None, ["model=tiny-llama", "layers=2-3", f"model.dtype={str(dtype)[6:]}",
                                "lora.r=4"])
    found = estimate(config, Device("cpu", 20 * GIB), table=False)
    model, _ = resolve_model("tiny-llama").load(LoadOptions(dtype=dtype))
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights are one parameter
    assert found.configured.terms["weights"] == loaded
    peft, _ = _lora(model, [2, 3])
    assert found.lora_params == count_trainable(peft)["trainable"]
    assert found.configured.terms["optimizer_state"] == 8 * found.lora_params


def test_four_bit_weights_are_what_bitsandbytes_holds():
    pytest.importorskip("bitsandbytes")
    from raylsl.config import ModelSettings
    from raylsl.models.loading import load_options

    spec = resolve_model("tiny-llama")
    model, _ = spec.load(load_options(ModelSettings(dtype="bfloat16", quantization="4bit"), torch.device("cpu")))
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(t.numel() * t.element_size() for m in model.modules() for t in _quant_state(m))
    assert weight_bytes(spec.skeleton(), torch.bfloat16, "4bit") == held


def _quant_state(module):
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is None:
        return []
    nested = [state.state2.absmax, state.state2.code, state.offset] if state.nested else []
    return [state.absmax, state.code, *nested]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert", "llama-3.2-1b", "qwen2.5-7b"])
def test_the_quick_bound_is_above_the_traced_estimate(name):
    overrides = [f"model={name}", "data.max_length=512", "train.batch_size=2"]
    for extra in (["task.format=text", "layers=all"], ["task.format=mc", "layers=0"],
                  ["task.format=text", "model.attn_implementation=eager", "layers=all"]):
        config = load_config(None, overrides + extra)
        device = Device("cuda", 80 * 10**9)
        total = estimate(config, device, table=False).configured.total
        assert quick_bound(config, device) >= total, extra


def test_a_run_that_cannot_fit_is_refused_with_the_cheapest_change():
    config = load_config(None, ["model=llama-3.2-1b", "data.max_length=2048", "train.batch_size=8",
                                "task.format=text", "layers=8-15", "gpu_memory=24GB"])
    with pytest.raises(DoesNotFit, match=r"needs an estimated .* GB per GPU \(weights 2.5 GB, .* lm head .*\), and "
                                         r"24GB GPU leaves 20.5 GB usable; it fits with train.loss_chunk=1024"):
        check_fit(config, Device("cuda", 24 * 10**9, 1, "24GB GPU"))


def test_auto_checkpointing_turns_on_only_where_the_run_needs_it():
    base = ["model=tiny-llama", "data.max_length=128", "train.batch_size=8", "task.format=text", "layers=1-3"]
    auto = load_config(None, base + ["train.activation_checkpointing=auto"])
    off = estimate(load_config(None, base), Device("cpu", GIB), table=False).configured.total
    on = estimate(load_config(None, base + ["train.activation_checkpointing=on"]), Device("cpu", GIB),
                  table=False).configured.total
    assert on < off
    device = lambda usable: Device("cpu", int(usable / 0.9) + 10)  # noqa: E731
    assert check_fit(auto, device(off)) is False
    assert check_fit(auto, device((on + off) // 2)) is True
    with pytest.raises(DoesNotFit):
        check_fit(auto, device(on - 1000))
    assert check_fit(auto, None) is None  # Ray workers decide against their own device


def test_a_zero3_worker_estimates_the_whole_model_without_collectives():
    """In a ZeRO-3 worker an ``HfDeepSpeedConfig`` is alive, and transformers then builds every
    model inside ``zero.Init``, whose collectives waited forever when only rank 0 estimated (a CI
    hang). The estimate builds its meta model whole: the same figure as outside a worker, no
    distributed init (in this one process without a process group ``zero.Init`` raises), and the
    worker's config is alive again afterwards."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config

    config = load_config(None, ["model=tiny-llama", "layers=1-3", "workers=2", "deepspeed=zero3"])
    outside = estimate(config, Device("cpu", GIB, 2), table=False).configured.total
    alive = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    try:
        assert is_deepspeed_zero3_enabled()
        inside = estimate(config, Device("cpu", GIB, 2), table=False).configured.total
        assert is_deepspeed_zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
        del alive
    assert inside == outside


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Every family of the matrix as a model directory holding its tiny config alone."""
    from raylsl.models import ARCHITECTURES
    from tests.models.architecture_cases import tiny_config

    root = tmp_path_factory.mktemp("families")
    for arch in ARCHITECTURES:
        tiny_config(arch).save_pretrained(root / arch.model_type)
    return root


@pytest.mark.parametrize("arch", __import__("raylsl.models", fromlist=["ARCHITECTURES"]).ARCHITECTURES,
                         ids=lambda a: a.model_type)
def test_every_family_is_estimated_exactly_or_bounded(arch, family_dirs):
    """Where a family's step runs on meta tensors, the estimate's step is the real CPU step's live
    bytes exactly (eager and sdpa attention); where it reads values (MoE routing, ModernBERT's
    unpadding), the estimate says it is a bound. Either way the fit check's shortcut bounds it."""
    from raylsl.models.checkpointing import checkpoint_blocks
    from tests.models.architecture_cases import tiny_model

    kind_format = "text" if arch.kind == "decoder" else "mc"
    config = load_config(None, [f"model={family_dirs / arch.model_type}", "data.max_length=24", "train.batch_size=2",
                                f"task.format={kind_format}", "layers=1,3", "lora.dropout=0.1"])
    device = Device("cpu", 20 * GIB)
    found = estimate(config, device, table=False)
    assert quick_bound(config, device) >= found.configured.total
    assert found.traced == (arch.model_type not in ("mixtral", "qwen2_moe", "modernbert"))
    if not found.traced:
        return
    from raylsl.lora import apply_lora

    for attention in ("sdpa", "eager"):
        real = tiny_model(arch)
        real.config._attn_implementation = attention if real._supports_sdpa else "eager"
        meta = resolve_model(str(family_dirs / arch.model_type)).skeleton()
        meta.config._attn_implementation = real.config._attn_implementation
        peaks = []
        for model, is_meta in ((real, False), (meta, True)):
            path, blocks = find_blocks(model)
            torch.manual_seed(0)
            with torch.device("meta" if is_meta else "cpu"):
                peft = apply_lora(model, [1, 3], LoraSettings(r=4, dropout=0.1), path, blocks, arch.kind)
            checkpoint_blocks(blocks, 3)
            peaks.append(trace_step(peft, 2, 24, 0 if arch.kind == "encoder" else 20, arch.kind == "encoder",
                                    sdpa="cpu" if is_meta else "none"))
        assert peaks[0] == peaks[1] > 0, attention
