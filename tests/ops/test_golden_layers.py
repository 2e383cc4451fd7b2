"""Every golden single-layer case of real Caffe (golden/layers/manifest.json), forward and backward."""
import pytest

from tests.golden import layer_cases, run_layer_case


@pytest.mark.parametrize("case", layer_cases())
def test_layer_matches_caffe(case, shared):
    run_layer_case(case)
