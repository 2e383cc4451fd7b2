"""Bad input gets one line naming the file and the line or the layer (interface.md, errors)."""
import shutil

import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.cli import format_error
from caffe_unstable.errors import CaffeUnstableError

LENET_TAIL = '''
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip" inner_product_param { num_output: 10 } }
'''
INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n'


def error_line(path_text, tmp_path, name="net.prototxt", weights=None):
    path = tmp_path / name
    path.write_text(path_text)
    with pytest.raises(CaffeUnstableError) as info:
        caffe.Net(str(path), caffe.TEST, weights=weights)
    line = format_error(info.value)
    assert "\n" not in line
    return line, str(path)


def test_syntax_error_names_file_and_line(tmp_path):
    line, path = error_line(INPUT + 'layer { name: "conv1" type: "Convolution"\n  bottom: "data" top: \n}\n', tmp_path)
    assert line.startswith(f"error: {path}:4: ")   # the '}' on line 4 is where a value was expected
    assert "Expected string" in line


def test_unknown_field_names_file_line_and_field(tmp_path):
    line, path = error_line(INPUT + 'layer {\n name: "c" type: "ReLU" bottom: "data" top: "data"\n relu_parm { } }\n',
                            tmp_path)
    assert line.startswith(f"error: {path}:4: ") and '"relu_parm"' in line


def test_unknown_layer_type_names_layer(tmp_path):
    line, path = error_line(INPUT + 'layer { name: "conv1" type: "Convolutoin" bottom: "data" top: "c" }\n', tmp_path)
    assert line.startswith(f"error: {path} layer 'conv1': Unknown layer type: Convolutoin (known types: ")
    assert "Convolution" in line


def test_bottom_nobody_produces(tmp_path):
    line, path = error_line(INPUT + 'layer { name: "relu" type: "ReLU" bottom: "dat" top: "r" }\n', tmp_path)
    assert line == f"error: {path} layer 'relu': Unknown bottom blob 'dat' (layer 'relu', bottom index 0)"


def test_mixed_layer_and_layers_refused(tmp_path):
    line, path = error_line(INPUT + 'layers { name: "relu" type: RELU bottom: "data" top: "data" }\n', tmp_path)
    assert line.startswith(f"error: {path}: Refusing to upgrade inconsistent NetParameter input")


def test_shape_mismatch_between_prototxt_and_caffemodel(shared, tmp_path):
    models = shared / "models/lenet_mnist"
    text = (models / "lenet.prototxt").read_text().replace("num_output: 20", "num_output: 16")
    weights = str(models / "lenet_iter_10000.caffemodel")
    line, _ = error_line(text, tmp_path, weights=weights)
    assert line == (f"error: {weights} layer 'conv1': Cannot copy param 0 weights from layer 'conv1'; shape "
                    "mismatch.  Source param shape is 20 1 5 5 (500); target param shape is 16 1 5 5 (400). To learn "
                    "this layer's parameters from scratch rather than copying from a saved net, rename the layer.")


def test_truncated_caffemodel(shared, tmp_path):
    models = shared / "models/lenet_mnist"
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes((models / "lenet_iter_10000.caffemodel").read_bytes()[:100_001])
    with pytest.raises(CaffeUnstableError) as info:
        caffe.Net(str(models / "lenet.prototxt"), str(cut), caffe.TEST)
    line = format_error(info.value)
    assert line.startswith(f"error: {cut}: ") and "truncated" in line


def test_hdf5_given_as_prototxt_and_binary_given_to_load_hdf5(shared, tmp_path):
    h5 = shared / "models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"
    with pytest.raises(CaffeUnstableError) as info:
        caffe.Net(str(h5), caffe.TEST)
    assert format_error(info.value) == f"error: {h5}: is an HDF5 file, expected a text NetParameter prototxt"
    net = caffe.Net(str(shared / "models/cifar10_quick/cifar10_quick.prototxt"), caffe.TEST)
    binary = shared / "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel"
    with pytest.raises(CaffeUnstableError) as info:
        net.load_hdf5(str(binary))
    assert format_error(info.value) == (f"error: {binary}: is not an HDF5 file "
                                        "(expected a .caffemodel.h5 written by Caffe)")
    from caffe_unstable.io.prototxt import read_net_binary
    with pytest.raises(CaffeUnstableError) as info:
        read_net_binary(h5)
    assert format_error(info.value) == f"error: {h5}: is an HDF5 file, expected a binary caffemodel (NetParameter)"


def test_hdf5_weights_detected_by_content_not_suffix(shared, tmp_path):
    src = shared / "models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"
    renamed = tmp_path / "weights.caffemodel"   # HDF5 content behind a binary suffix
    shutil.copyfile(src, renamed)
    proto = str(shared / "models/cifar10_quick/cifar10_quick.prototxt")
    a = caffe.Net(proto, str(renamed), caffe.TEST)
    b = caffe.Net(proto, str(src), caffe.TEST)
    np.testing.assert_array_equal(a.params["conv1"][0].data, b.params["conv1"][0].data)
    assert np.abs(a.params["conv1"][0].data).sum() > 0
