"""Weights from where they live: models in storage (moto S3 here), copied once per node; a local
directory too large for Ray's object store refused in one line; `raylsl upload-model`,
content-addressed."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from raylsl.cli import main
from raylsl.errors import ModelError
from raylsl.models import resolve_model
from raylsl.plan import SHIP_LIMIT, ModelSource
from tests.conftest import write_task


@pytest.fixture
def model_dir(tmp_path) -> Path:
    target = tmp_path / "my-model"
    shutil.copytree(resolve_model("tiny-llama").directory(), target)
    return target


@pytest.fixture
def s3(tmp_path, monkeypatch):
    from tests.distributed.two_node import S3Server

    server = S3Server(tmp_path)
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path / "node-cache"))  # this "node"'s cache starts empty
    yield server
    server.stop()


def test_a_local_directory_above_the_limit_is_refused_in_one_line(tmp_path, model_dir, capsys):
    with open(model_dir / "model-00002.safetensors", "wb") as fh:  # sparse: its size, not its bytes
        fh.truncate(SHIP_LIMIT)
    task = write_task(tmp_path / "colours.jsonl")
    code = main(["train", f"model={model_dir}", f"task={task}", "workers=2", f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"raylsl: error: model directory {model_dir} is 2.0 GB, more than the 2 GB a local directory "
                             f"may send to Ray's other nodes through the object store")
    assert f"`raylsl upload-model {model_dir} s3://BUCKET/models`" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing written
    with pytest.raises(ModelError, match="more than the 2 GB"):
        ModelSource(str(model_dir)).shipped()  # refused before Ray or the files are touched


def test_upload_is_content_addressed_and_a_second_upload_is_free(s3, model_dir, tmp_path, capsys):
    assert main(["upload-model", str(model_dir), "s3://raylsl/models"]) == 0
    uri, done = capsys.readouterr().out.splitlines()[0].split("  ")
    assert uri.startswith("s3://raylsl/models/") and done.startswith("(uploaded")
    digest = uri.rsplit("/", 1)[1]
    keys = s3.keys(f"models/{digest}/")
    assert f"models/{digest}/model.safetensors" in keys and f"models/{digest}/raylsl-model.json" in keys
    puts = s3.requests("PUT", f"models/{digest}/model.safetensors")

    elsewhere = shutil.copytree(model_dir, tmp_path / "same-weights-elsewhere")
    assert main(["upload-model", str(elsewhere), "s3://raylsl/models"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{uri}  (already in storage: nothing uploaded)"
    assert s3.keys(f"models/{digest}/") == keys and s3.requests("PUT", f"models/{digest}/model.safetensors") == puts

    (elsewhere / "generation_config.json").write_text(json.dumps({"max_new_tokens": 3}))
    assert main(["upload-model", str(elsewhere), "s3://raylsl/models"]) == 0
    assert capsys.readouterr().out.split("  ")[0] != uri  # other content, another address


def test_a_model_in_storage_is_copied_once_per_node_and_planning_reads_its_config_only(s3, model_dir, tmp_path, capsys):
    main(["upload-model", str(model_dir), "s3://raylsl/models"])
    uri = capsys.readouterr().out.split("  ")[0]
    weights = f"{uri.removeprefix('s3://raylsl/')}/model.safetensors"
    spec = resolve_model(uri)
    assert spec.kind == "decoder" and len(spec.skeleton().model.layers) == 4
    assert not list((tmp_path / "node-cache" / "models").glob("stored-*/*.safetensors"))  # planning: config.json alone
    first, _ = spec.load()
    second, _ = resolve_model(uri).load()
    assert s3.requests("GET", weights) == 1
    local, _ = resolve_model(str(model_dir)).load()
    for (name, a), b, c in zip(local.state_dict().items(), first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), name


def test_bad_model_uploads_and_uris_are_one_line(s3, tmp_path, capsys):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "weights.bin").write_bytes(b"x")
    assert main(["upload-model", str(tmp_path / "not-a-model"), "s3://raylsl/models"]) == 2
    assert capsys.readouterr().err.strip() == (f"raylsl: error: {tmp_path / 'not-a-model'} has no config.json: give a "
                                               f"model directory as save_pretrained writes it")
    assert main(["upload-model", str(tmp_path / "missing"), "s3://raylsl/models"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert s3.keys("models/") == []  # nothing half-written
    task = write_task(tmp_path / "colours.jsonl")
    assert main(["select", "model=s3://raylsl/models/nothing-here", f"task={task}", "--selector", "cka", "--n", "2",
                 f"output_dir={tmp_path / 'runs'}"]) == 2
    assert capsys.readouterr().err.strip() == ("raylsl: error: model s3://raylsl/models/nothing-here has no config.json: "
                                               "a model in storage is a model directory; put one there with "
                                               "`raylsl upload-model DIR s3://raylsl/models`")
