import pytest

from raylsl.config import DataSettings, TaskSettings
from raylsl.data import load_task
from raylsl.models import find_blocks, resolve_model
from raylsl.objective import make_objective


@pytest.fixture(autouse=True)
def score_cache(tmp_path, monkeypatch):
    """Every selector test gets its own empty score cache."""
    monkeypatch.setenv("RAYLSL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def splits(task_file):
    return load_task(TaskSettings(name=str(task_file)), DataSettings(test_size=20, val_size=10))


@pytest.fixture
def tiny(request):
    """(model, blocks, objective) for tiny-llama, or tiny-bert with indirect parametrization."""
    name = getattr(request, "param", "tiny-llama")
    spec = resolve_model(name)
    model, tok = spec.load()
    return model, find_blocks(model)[1], make_objective(spec.kind, tok, 64)
