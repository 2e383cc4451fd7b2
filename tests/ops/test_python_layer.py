"""The Python layer (caffe_unstable/ops/python_layer.py), driven directly through the Layer protocol."""
import sys

import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from caffe_unstable.ops.python_layer import BlobVec, PyLayer
from caffe_unstable.proto import caffe_pb2
from tests.ops.gradcheck import check_gradient, layer_from_text

# pycaffe's examples/pycaffe/layers/pyloss.py, written as users write it against `caffe.Layer`.
PYLOSS = """
import numpy as np
from caffe_unstable.ops.python_layer import PyLayer as Layer


class EuclideanLossLayer(Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num
"""

# A layer with a param_str, a learnable blob, the phase, and a backward that reads the top diff.
SCALED = """
import json
import numpy as np
from caffe_unstable.ops.python_layer import PyLayer as Layer


class ScaledProduct(Layer):
    '''top = k * w * bottom0 * bottom1, with k from param_str and a learnable scalar w.'''

    def setup(self, bottom, top):
        self.k = json.loads(self.param_str)["k"]
        self.seen_phase = self.phase
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.k * self.blobs[0].data[0] * bottom[0].data * bottom[1].data

    def backward(self, top, propagate_down, bottom):
        k, w = self.k, self.blobs[0].data[0]
        if propagate_down[0]:
            bottom[0].diff[...] = k * w * bottom[1].data * top[0].diff
        if propagate_down[1]:
            bottom[1].diff[...] = k * w * bottom[0].data * top[0].diff
        self.blobs[0].diff[0] += k * np.sum(bottom[0].data * bottom[1].data * top[0].diff)


class NotALayerFunction:
    pass
"""


@pytest.fixture
def layer_modules(tmp_path, monkeypatch):
    """Write `pyloss_t.py` and `scaled_t.py` to tmp_path, put it on sys.path, forget them afterwards."""
    (tmp_path / "pyloss_t.py").write_text(PYLOSS)
    (tmp_path / "scaled_t.py").write_text(SCALED)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("pyloss_t", "scaled_t"):
        sys.modules.pop(name, None)


def blob(values):
    b = Blob(np.shape(values))
    b.data[...] = values
    return b


def run(layer, bottoms, top_diff=None, propagate_down=None):
    top = [Blob()]
    layer.setup(bottoms, top)
    layer.reshape(bottoms, top)
    layer.forward(bottoms, top)
    top[0].diff[...] = 1.0 if top_diff is None else top_diff
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.backward(top, propagate_down or [True] * len(bottoms), bottoms)
    return top[0]


def test_python_euclidean_loss_equals_native(layer_modules):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    y = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    py = layer_from_text('type: "Python" python_param { module: "pyloss_t" layer: "EuclideanLossLayer" } '
                         'loss_weight: 1', name="pyloss")
    native = layer_from_text('type: "EuclideanLoss"', name="loss")
    py_bottom, native_bottom = [blob(x), blob(y)], [blob(x), blob(y)]
    py_top = run(py, py_bottom)
    native_top = run(native, native_bottom)
    expected = np.sum((x.astype(np.float64) - y) ** 2) / 4 / 2
    assert py_top.shape == (1,)
    assert float(py_top.data[0]) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(py_top.data[0], native_top.data, rtol=1e-6)
    for p, n in zip(py_bottom, native_bottom):
        np.testing.assert_allclose(p.diff, n.diff, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(py_bottom[0].diff, (x - y) / 4, rtol=1e-6)
    np.testing.assert_allclose(py_bottom[1].diff, -(x - y) / 4, rtol=1e-6)


def test_param_str_phase_blobs_and_propagate_down(layer_modules):
    layer = layer_from_text('type: "Python" python_param { module: "scaled_t" layer: "ScaledProduct" '
                            "param_str: '{\"k\": 3}' }", phase=caffe_pb2.TRAIN, name="prod")
    a, b = blob([1.0, 2.0, -1.0]), blob([0.5, -2.0, 4.0])
    b.diff[...] = 7.0  # must stay: propagate_down[1] is False
    top = run(layer, [a, b], top_diff=[1.0, 0.5, 2.0], propagate_down=[True, False])
    np.testing.assert_allclose(top.data, 3 * 1.5 * np.array([0.5, -4.0, -4.0]))
    assert layer.py.k == 3 and layer.py.param_str == '{"k": 3}'
    assert layer.py.seen_phase == caffe_pb2.TRAIN and layer.py.phase == 0
    np.testing.assert_allclose(a.diff, 3 * 1.5 * np.array([0.5, -2.0 * 0.5, 4.0 * 2.0]))
    np.testing.assert_array_equal(b.diff, [7.0, 7.0, 7.0])
    # the blobs the user appended are the layer's params, and param diffs accumulate
    assert isinstance(layer.blobs, BlobVec) and layer.blobs is layer.py.blobs and layer.blobs[0].shape == (1,)
    assert layer.blobs[0].diff[0] == pytest.approx(3 * (0.5 * 1.0 + -4.0 * 0.5 + -4.0 * 2.0))
    layer.backward([top], [False, False], [a, b])
    assert layer.blobs[0].diff[0] == pytest.approx(2 * 3 * (0.5 - 2.0 - 8.0))


def test_gradient_of_python_layer(layer_modules):
    text = 'type: "Python" python_param { module: "scaled_t" layer: "ScaledProduct" param_str: "{\\"k\\": 2}" }'
    worst = check_gradient(lambda: layer_from_text(text), [(2, 3), (2, 3)])
    assert worst < 1e-2


def test_pylayer_defaults():
    p = caffe_pb2.LayerParameter(name="x", type="Python", phase=caffe_pb2.TEST)
    p.python_param.param_str = "abc"
    layer = PyLayer(p)
    assert (layer.param_str, layer.phase, layer.type, list(layer.blobs)) == ("abc", 1, "Python", [])
    assert layer.layer_param is p
    layer.blobs.add_blob(2, 3)
    layer.blobs.add_blob((4,))
    assert [b.shape for b in layer.blobs] == [(2, 3), (4,)]
    layer.setup([], [])
    layer.reshape([], [])
    layer.backward([], [False], [])
    with pytest.raises(CaffeUnstableError, match="layer 'x': Python layer PyLayer does not define forward"):
        layer.forward([], [])


def test_import_from_current_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd_layer_t.py").write_text(SCALED)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        layer = layer_from_text('type: "Python" python_param { module: "cwd_layer_t" layer: "ScaledProduct" '
                                'param_str: "{\\"k\\": 1}" }')
        top = run(layer, [blob([2.0]), blob([3.0])])
        np.testing.assert_allclose(top.data, [9.0])
        assert str(tmp_path) not in sys.path  # the directory was only on the path during the import
    finally:
        sys.modules.pop("cwd_layer_t", None)


def test_errors(layer_modules):
    with pytest.raises(CaffeUnstableError) as e:
        layer_from_text('type: "Python" python_param { module: "no_such_module_xyz" layer: "L" }', name="py")
    assert e.value.where == "layer 'py'"
    assert e.value.what.startswith("cannot import Python layer module 'no_such_module_xyz': "
                                   "ModuleNotFoundError: No module named 'no_such_module_xyz'")
    with pytest.raises(CaffeUnstableError, match=r"layer 'py': Python layer module 'scaled_t' \(.*scaled_t.py\) "
                                                 r"has no attribute 'Missing'"):
        layer_from_text('type: "Python" python_param { module: "scaled_t" layer: "Missing" }', name="py")
    with pytest.raises(CaffeUnstableError, match=r"^layer 'py': python_param.module is not set"):
        layer_from_text('type: "Python" python_param { layer: "L" }', name="py")
    with pytest.raises(CaffeUnstableError, match=r"^layer 'py': python_param.layer is not set .* 'scaled_t'"):
        layer_from_text('type: "Python" python_param { module: "scaled_t" }', name="py")
    # exceptions raised by the user's own code reach the caller unchanged, as in pycaffe
    layer = layer_from_text('type: "Python" python_param { module: "pyloss_t" layer: "EuclideanLossLayer" }')
    with pytest.raises(Exception, match="Need two inputs to compute distance."):
        layer.setup([blob([1.0])], [Blob()])
