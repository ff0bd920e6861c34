import pytest


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray for the module: each TorchTrainer.fit already costs ~30 s of start-up."""
    ray = pytest.importorskip("ray")
    # address="local": a fresh instance, never a head another test (or user) left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
