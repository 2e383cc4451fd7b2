"""Fixtures of the accelerator tests: the hypothesis CI profile and one compiled numba backend per session."""
import pytest
from hypothesis import HealthCheck, settings

# derandomized, no deadline (the first numba call compiles), bounded examples: `make test` stays fast
CI = settings(derandomize=True, deadline=None, max_examples=60, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="session")
def numba_backend():
    from caffe_unstable.accel.backends.numba import NumbaBackend
    from caffe_unstable.accel.interface import HwConfig

    return NumbaBackend(HwConfig())
