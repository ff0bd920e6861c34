"""The architecture matrix's models are 16 wide: one thread computes them fastest, and extra threads
only spin against whatever else runs on the machine."""

import pytest

from tests.conftest import torch_threads


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    with torch_threads(1):
        yield
