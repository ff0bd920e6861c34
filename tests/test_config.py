from pathlib import Path

import pytest

from raylsl.config import SMOKE_OVERRIDES, RunConfig, load_config
from raylsl.errors import ConfigError

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_open_with_their_command(path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert path.read_text().startswith(f"# raylsl train configs/{path.name}")


def test_there_are_configs():
    assert len(CONFIGS) >= 3


def test_defaults_are_the_offline_demo():
    config = load_config()
    assert (config.model.name, config.task.name, config.layers) == ("smollm2-135m", "sarcasm", "all")


def test_overrides_parse_types_and_nest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: tiny-llama\ntask: quartz\nlora:\n  r: 4\n")
    config = load_config(path, ["lora.r=16", "train.lr=3e-4", "layers=0-2", "task.label_field=y",
                                "lora.target_modules=q_proj,v_proj", "data.train_size=null"])
    assert config.lora.r == 16 and config.train.lr == 3e-4 and config.layers == "0-2"
    assert config.task.name == "quartz" and config.task.label_field == "y"
    assert config.lora.target_modules == ("q_proj", "v_proj") and config.data.train_size is None
    assert load_config(None, ["layers=[1, 3]"]).layers == "1,3"


def test_smoke_overrides_are_valid_keys():
    config = load_config(None, dict(SMOKE_OVERRIDES))
    assert config.train.steps == SMOKE_OVERRIDES["train.steps"]


@pytest.mark.parametrize("yaml_text, overrides, message", [
    ("lora:\n  rank: 4\n", [], r"unknown key 'lora.rank' in .*c.yaml; valid keys here: alpha, dropout, r"),
    ("", ["trian.steps=3"], r"unknown key 'trian' in the command-line overrides"),
    ("", ["lora.r=0"], r"lora.r=0 must be a positive integer"),
    ("", ["lora.dropout=1.5"], r"lora.dropout=1.5 must be in \[0, 1\)"),
    ("", ["train.steps=many"], r"'train.steps' in the command-line overrides must be int"),
    ("", ["train.precision=fp8"], r"train.precision='fp8' must be auto, fp32 or bf16"),
    ("", ["lora.r"], r"override 'lora.r' must look like key=value"),
    ("train: 3\n", [], r"'train' in .*c.yaml must be a mapping"),
    ("- a\n- b\n", [], r"must hold a mapping"),
    ("model: [unclosed\n", [], r"is not valid YAML"),
])
def test_bad_config_messages(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="cannot read config file /nonexistent.yaml"):
        load_config("/nonexistent.yaml")
