"""The architecture matrix's models are 16 wide: one thread computes them fastest, and extra threads
only spin against whatever else runs on the machine."""

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
