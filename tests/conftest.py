import pyro
import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    # Pyro's parameter store is global: a test must never see another test's networks.
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """float64 as torch's default dtype for the test: sums equal up to rounding compare to
    1e-12, not to float32's summation-order noise."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny networks run faster so, on a shared CPU too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def registries():
    """pvae's registries of parts (priors, likelihoods, guides, networks) as they were before
    the test: loading a checkpoint with custom_parts= registers parts."""
    from pvae.models.custom_parts import REGISTRIES

    saved = {kind: dict(registry) for kind, registry in REGISTRIES.items()}
    yield
    for kind, registry in REGISTRIES.items():
        registry.clear()
        registry.update(saved[kind])
