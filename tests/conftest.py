import numpy as np
import pytest

from scratchvae import kernels


@pytest.fixture(params=["numpy", "cpu"])
def backend(request):
    """Run a test once on the NumPy reference and once on the Numba CPU kernels."""
    with kernels.using(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
