"""Fixtures of the vision tests: the colour data and a score cache of the module's own (one torch
thread for every test: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vision_cases import write_colours



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
