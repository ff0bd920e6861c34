"""Fixtures of the vision tests: the colour data, a score cache of the module's own, and one torch
thread (the tiny models' steps are 5-20x slower with two threads on a shared 2-core machine:
the threads spin against each other and whatever else runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vision_cases import write_colours

from tests.conftest import torch_threads


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def colours(tmp_path_factory) -> tuple[Path, Path]:
    return write_colours(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module", autouse=True)
def score_cache(tmp_path_factory):
    """Each module's selector scores go to its own cache, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("scores")
        patch.setenv("RAYLSL_SCORE_CACHE", str(path))
        yield path
