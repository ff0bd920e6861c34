"""The architecture matrix: every family in `raylsl.models.ARCHITECTURES`, as a tiny random model
built from its own config class (`architecture_cases`), through block discovery, default targets,
parameter counts, every selector, two training steps per head, and the three export forms; a
vision-language model on image+text rows.

Adapter placement is read back from the names of the modules that got LoRA weights, never from
what raylsl asked peft for.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from architecture_cases import (DYNAMIC_SELECTORS, EXPORT_FORMS, HEADS, LAYERS, STATIC_SELECTORS, gen_examples,
                                mc_examples, tiny_model, tokenizer)
from raylsl.config import CalibrationSettings, LoraSettings, TrainSettings
from raylsl.errors import ConfigError
from raylsl.export import export_adapter
from raylsl.lora import ENCODER_HEAD, apply_lora, count_trainable, default_target_modules, loose_weights, target_layers
from raylsl.models import (ARCHITECTURES, ENCODER, VLM, block_index, find_blocks, layers_pattern, model_kind,
                           resolve_model)
from raylsl.models.vision import image_inputs
from raylsl.objective import make_objective, to_device
from raylsl.selectors import Budget, TrainingContext, build_selector, select_blocks
from raylsl.training.loop import train_loop

pytestmark = [
    pytest.mark.filterwarnings("ignore::raylsl.errors.RaylslWarning"),  # MoE defaults: tests/models/test_unsupported.py
    pytest.mark.filterwarnings("ignore:cka. block 0:RuntimeWarning"),  # encoders: block 0's CLS input is one vector
    pytest.mark.filterwarnings("ignore:raylsl. .* faster layout:RuntimeWarning"),  # OPT, Falcon: positions from the mask
]
MOE = [pytest.param(a, id=a.model_type) for a in ARCHITECTURES if a.experts]
SELECTOR_OPTIONS = {"flexora": {"search_steps": 2, "val_batches": 1, "val_batch_size": 4}, "list": {"layers": "1,3"},
                    "ist": {"n_update": 1, "interval": 1, "probe_batch_size": 4}, "lisa": {"n_active": 1, "interval": 1}}
TWO_STEPS = TrainSettings(steps=2, batch_size=8, warmup_steps=0, lr=2e-2, checkpoint_every=0)


@pytest.fixture(scope="module", params=[pytest.param(a, id=a.model_type) for a in ARCHITECTURES])
def arch(request):
    return request.param


def _objective(arch, generative: bool = False):
    return make_objective(arch.kind, tokenizer(arch), 64, generative=generative)


def _lora(arch, layers, **settings):
    model = tiny_model(arch)
    path, blocks = find_blocks(model)
    return apply_lora(model, list(layers), LoraSettings(**{"r": 2, "dropout": 0.0, **settings}), path, blocks, arch.kind)


def lora_sites(model: torch.nn.Module, blocks_path: str) -> dict[int, set[str]]:
    """Block index -> block-relative names of the modules holding LoRA weights (a fused-weight
    adapter is peft's wrapper of the module that owns the weight)."""
    pattern = re.compile(block_index(blocks_path).pattern + r"(.+?)(?:\.base_layer)*\.lora_A\.")
    sites: dict[int, set[str]] = {}
    for name, _ in model.named_parameters():
        if match := pattern.search(name):
            sites.setdefault(int(match[1]), set()).add(match[2])
    return sites


def lora_outside(model: torch.nn.Module, blocks_path: str) -> list[str]:
    """Modules holding LoRA weights outside the block list (a VLM's vision tower has a list of the
    same name and layers of the same names)."""
    inside = block_index(blocks_path)
    return sorted({name.split(".lora_A")[0] for name, _ in model.named_parameters()
                   if ".lora_A" in name and not inside.search(name)})


def expected_sites(arch, layers, experts: tuple[str, ...] = ()) -> dict[int, set[str]]:
    """What `lora_sites` must read: the targets' modules (and the experts' owners) in ``layers``."""
    names = _target_names(arch) | {name.rsplit(".", 1)[0] for name in experts}
    return {i: names for i in layers}


@functools.cache
def _target_names(arch) -> frozenset[str]:
    block = find_blocks(tiny_model(arch))[1][0]
    return frozenset(name for name, m in block.named_modules() if m in target_layers(block, arch.targets))


def lora_size(arch, layers, experts: tuple[str, ...], r: int) -> int:
    """LoRA parameters by hand: r x (fan_in + fan_out) per targeted layer, per expert for fused weights."""
    blocks = find_blocks(tiny_model(arch))[1]
    total = 0
    for i in layers:
        for layer in target_layers(blocks[i], arch.targets):
            total += r * sum(layer.weight.shape)  # Linear (out, in) and Conv1D (in, out) alike
        for name in experts:
            num, fan_a, fan_b = blocks[i].get_parameter(name).shape
            total += r * num * (fan_a + fan_b)
    return total


# --- facts -----------------------------------------------------------------------------------------

def test_the_table_is_what_transformers_builds(arch, monkeypatch):
    model = tiny_model(arch)
    path, blocks = find_blocks(model)
    assert (path, len(blocks), len({type(b) for b in blocks})) == (arch.blocks_path, 4, 1)
    inside = {id(m) for m in blocks.modules()}
    assert id(model.get_input_embeddings()) not in inside
    assert id(model.get_output_embeddings() or getattr(model, "classifier", None)) not in inside
    monkeypatch.setattr("raylsl.models.blocks.architecture", lambda model_type: None)
    assert find_blocks(model)[0] == arch.blocks_path  # discovery alone finds the same list
    assert model_kind(model.config) == arch.kind
    if arch.kind == VLM:  # the vision tower's blocks are found by their own path, apart from the language blocks
        vision = find_blocks(model, arch.vision_blocks_path)[1]
        assert len(vision) == 2 and not {id(m) for m in vision.modules()} & inside
        assert all(model.get_submodule(name) for name in arch.vision_modules)
    assert default_target_modules(blocks, arch.model_type) == list(arch.targets)
    block = blocks[0]
    targeted = {id(p) for m in target_layers(block, arch.targets) for p in m.parameters()}
    routers = {id(p) for name, m in block.named_modules() if name.rsplit(".", 1)[-1] in arch.routers
               for p in m.parameters()}
    loose = loose_weights(block, arch.model_type)
    assert sorted(loose) == list(arch.experts)
    # Every weight matrix in a block is a target, a router gate or a documented expert weight.
    assert [n for n, p in block.named_parameters()
            if p.dim() >= 2 and id(p) not in targeted | routers and n not in loose] == []
    assert arch.conv1d == all(isinstance(m, Conv1D) for m in target_layers(block, arch.targets))


def test_lora_sits_on_the_targets_of_the_chosen_blocks_and_counts_as_peft_does(arch):
    model = _lora(arch, LAYERS)
    assert lora_sites(model, arch.blocks_path) == expected_sites(arch, LAYERS)
    assert lora_outside(model, arch.blocks_path) == []
    assert model.peft_config["default"].target_modules == list(arch.targets)
    counts = count_trainable(model)
    assert counts["trainable"] == model.get_nb_trainable_parameters()[0]
    assert counts["adapter"] == lora_size(arch, LAYERS, (), r=2)
    base = tiny_model(arch)
    plain = get_peft_model(base, LoraConfig(
        r=2, target_modules=list(arch.targets), layers_to_transform=LAYERS, fan_in_fan_out=arch.conv1d,
        layers_pattern=layers_pattern(arch.blocks_path, base),
        modules_to_save=list(ENCODER_HEAD) if arch.kind == ENCODER else None))
    assert counts["trainable"] == plain.get_nb_trainable_parameters()[0]
    for name in arch.vision_modules:  # frozen, no adapter
        assert not any(p.requires_grad for p in model.base_model.model.get_submodule(name).parameters())


# --- selectors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STATIC_SELECTORS)
def test_a_static_selector_gets_adapters_on_exactly_its_blocks(arch, name):
    model = tiny_model(arch)
    path, blocks = find_blocks(model)
    selector = build_selector(name, SELECTOR_OPTIONS.get(name))
    examples = mc_examples(16, arch)
    settings = LoraSettings(r=2, dropout=0.0)
    selection = select_blocks(model, blocks, _objective(arch), examples[:8], selector,
                              Budget(n=2) if selector.uses_budget or name == "flexora" else Budget(),
                              CalibrationSettings(size=8, batch_size=8), None, 64, use_cache=False,
                              validation=examples[8:], blocks_path=path, lora=settings, train_settings=TWO_STEPS)
    assert selection.layers and len(selection.layers) == len(set(selection.layers))
    peft_model = apply_lora(model, selection.layers, settings, path, blocks, arch.kind)
    assert lora_sites(peft_model, path) == expected_sites(arch, selection.layers)


@pytest.mark.parametrize("name", DYNAMIC_SELECTORS)
def test_a_dynamic_selector_trains_exactly_its_active_block(arch, name, tmp_path):
    model = _lora(arch, range(4))
    examples = mc_examples(16, arch)
    objective = _objective(arch)
    selector = build_selector(name, SELECTOR_OPTIONS[name])
    callback = selector.training_callback(TrainingContext(model, arch.blocks_path, 4, objective, examples[8:], 0))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train_loop(model, objective, examples[:8], TrainSettings(steps=1, batch_size=4, warmup_steps=0, checkpoint_every=0),
               tmp_path, (callback,), progress=False)
    moved = {int(re.search(rf"\.{layers_pattern(arch.blocks_path)}\.(\d+)\.", n)[1])
             for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    (active,) = [json.loads(line)["active_blocks"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(active) == 1 and moved == set(active)


# --- training --------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["mc", "generative"])
def test_two_steps_lower_the_loss_on_a_fixed_batch(arch, head, tmp_path):
    if head not in HEADS[arch.kind]:
        with pytest.raises(ConfigError, match="generative tasks .* train a decoder; this model is an encoder"):
            _objective(arch, generative=True)
        return
    model = _lora(arch, LAYERS, r=4)
    objective = _objective(arch, generative=head == "generative")
    examples = gen_examples(8, arch) if head == "generative" else mc_examples(8, arch)
    batch = objective.batch(examples)
    with torch.no_grad():
        before = float(objective.loss(model.eval(), batch))
    train_loop(model, objective, examples, TWO_STEPS, tmp_path, progress=False)
    with torch.no_grad():
        after = float(objective.loss(model.eval(), batch))
    assert after < before


# --- export ----------------------------------------------------------------------------------------

@dataclass
class Trained:
    """A family's model after two steps with LoRA on `LAYERS`, its saved adapter, and its logits."""

    base: Path
    adapter: Path
    batch: dict
    logits: torch.Tensor


def train_and_save(arch, root: Path, **settings) -> Trained:
    """Saves the base (with its tokenizer), trains LoRA two steps on it, saves the adapter and
    keeps the trained model's logits on a fixed batch."""
    tiny_model(arch).save_pretrained(root / "base")
    tokenizer(arch).save_pretrained(root / "base")
    model = _lora(arch, LAYERS, **settings)
    objective = _objective(arch)
    train_loop(model, objective, mc_examples(8, arch), TWO_STEPS, root / "run", progress=False)
    model.save_pretrained(root / "adapter")
    batch = objective.batch(mc_examples(4, arch))
    return Trained(root / "base", root / "adapter", batch, logits(model, batch))


@torch.no_grad()
def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model.eval()(**inputs, **image_inputs(batch)).logits


@pytest.fixture(scope="module")
def trained(arch, tmp_path_factory) -> Trained:
    return train_and_save(arch, tmp_path_factory.mktemp(arch.model_type))


def reload(arch, trained: Trained, form: str, out: Path) -> torch.nn.Module:
    """The export as its consumer loads it: plain transformers for merged, else peft on the base."""
    cls = {ENCODER: transformers.AutoModelForMultipleChoice, VLM: transformers.AutoModelForImageTextToText}.get(
        arch.kind, transformers.AutoModelForCausalLM)
    if form == "merged":
        return cls.from_pretrained(out)
    return PeftModel.from_pretrained(cls.from_pretrained(trained.base), out)


@pytest.mark.parametrize("form", EXPORT_FORMS)
def test_each_export_form_gives_the_trained_logits(arch, trained, form, tmp_path):
    out = export_adapter(trained.adapter, form, tmp_path / form, resolve_model(str(trained.base)))
    model = reload(arch, trained, form, out)
    # fp32 throughout; merging W + s*B@A changes the sum's rounding only (observed <= 2e-7 here).
    torch.testing.assert_close(logits(model, trained.batch), trained.logits, atol=1e-5, rtol=0)
    if form == "merged":
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
        return
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == list(arch.targets)
    if form == "padded":
        assert config["layers_to_transform"] is None and config["layers_pattern"] is None
        assert lora_sites(model, arch.blocks_path) == expected_sites(arch, range(4))
        if arch.kind == VLM:  # BERT's pooler gets a zero adapter; a vision tower must not
            assert lora_outside(model, arch.blocks_path) == []


# --- MoE experts through lora.target_parameters ------------------------------------------------------

@pytest.mark.parametrize("arch", MOE)
def test_moe_experts_adapted_on_request(arch, tmp_path):
    model = _lora(arch, LAYERS, target_parameters=arch.experts)
    assert lora_sites(model, arch.blocks_path) == expected_sites(arch, LAYERS, arch.experts)
    counts = count_trainable(model)
    assert counts["trainable"] == model.get_nb_trainable_parameters()[0]
    assert counts["adapter"] == lora_size(arch, LAYERS, arch.experts, r=2)
    trained = train_and_save(arch, tmp_path, target_parameters=arch.experts)
    for form in EXPORT_FORMS:
        out = export_adapter(trained.adapter, form, tmp_path / form, resolve_model(str(trained.base)))
        torch.testing.assert_close(logits(reload(arch, trained, form, out), trained.batch), trained.logits,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", MOE)
def test_selectors_that_scale_lora_outputs_refuse_fused_expert_lora(arch):
    model = _lora(arch, range(4), target_parameters=arch.experts)
    ist = build_selector("ist", SELECTOR_OPTIONS["ist"])
    with pytest.raises(ConfigError, match="selector=ist scales each block's LoRA output.*lora.target_parameters"):
        ist.training_callback(TrainingContext(model, arch.blocks_path, 4, _objective(arch), mc_examples(), 0))
    base = tiny_model(arch)
    path, blocks = find_blocks(base)
    with pytest.raises(ConfigError, match="selector=flexora scales each block's LoRA output"):
        select_blocks(base, blocks, _objective(arch), mc_examples(), build_selector("flexora", SELECTOR_OPTIONS["flexora"]),
                      Budget(n=2), CalibrationSettings(size=8), None, 64, use_cache=False, validation=mc_examples(),
                      blocks_path=path, lora=LoraSettings(r=2, dropout=0.0, target_parameters=arch.experts),
                      train_settings=TWO_STEPS)
    assert not any("lora_" in n for n, _ in base.named_parameters())  # Flexora's search adapters are gone
