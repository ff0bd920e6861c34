import pytest


@pytest.fixture(scope="module")
def ray_session():
    """One embedded Ray for the module: each TorchTrainer.fit already costs ~30 s of start-up."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
