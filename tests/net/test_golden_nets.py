"""The golden whole nets (golden/nets): every blob, the loss and every parameter gradient at rtol 1e-3."""
import pytest

from tests.golden import net_cases, run_net_case


@pytest.mark.parametrize("entry,phase,info", net_cases())
def test_net_matches_caffe(entry, phase, info, shared):
    run_net_case(entry, phase, info)
