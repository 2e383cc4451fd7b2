"""UpgradeNetAsNeeded / UpgradeSolverAsNeeded: V0 -> V1 -> current, input fields, BatchNorm, solver_type."""
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.io import upgrade
from caffe_unstable.io.prototxt import read_net_binary, read_net_text, read_solver_text
from caffe_unstable.proto import caffe_pb2

V0_NET = '''name: "v0"
input: "data" input_dim: 2 input_dim: 3 input_dim: 8 input_dim: 8
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2 biasterm: false
                 weight_filler { type: "xavier" } blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
layers { layer { name: "ip" type: "innerproduct" num_output: 10 } bottom: "pool1" top: "ip" }
layers { layer { name: "norm" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.25 } bottom: "ip" top: "norm" }
'''


def parse(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def test_v0_net_is_upgraded_to_current_format():
    net = upgrade.upgrade_net_as_needed(parse(V0_NET), "v0.prototxt")
    assert len(net.layers) == 0 and len(net.input) == 0 and len(net.input_dim) == 0
    names = [layer.name for layer in net.layer]
    assert names == ["input", "conv1", "pool1", "drop", "ip", "norm"]      # padding folded, Input first
    inp, conv, pool, drop, ip, norm = net.layer
    assert inp.type == "Input" and list(inp.top) == ["data"] and list(inp.input_param.shape[0].dim) == [2, 3, 8, 8]
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"]
    cp = conv.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.stride), list(cp.pad), cp.bias_term) == (4, [3], [2], [2], False)
    assert cp.weight_filler.type == "xavier"
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert pool.type == "Pooling" and pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert drop.type == "Dropout" and abs(drop.dropout_param.dropout_ratio - 0.3) < 1e-7
    assert ip.type == "InnerProduct" and ip.inner_product_param.num_output == 10
    assert norm.type == "LRN" and norm.lrn_param.local_size == 3


def test_v0_unknown_type_and_misplaced_field():
    with pytest.raises(CaffeUnstableError, match="Unknown layer name: fancy"):
        upgrade.upgrade_net_as_needed(parse('layers { layer { name: "x" type: "fancy" } }'), "f")
    with pytest.raises(CaffeUnstableError, match="Padding layer input to non-convolutional"):
        upgrade.upgrade_net_as_needed(parse(
            'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" }\n'
            'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }'), "f")


def test_v1_data_transformation_fields_move():
    net = upgrade.upgrade_net_as_needed(parse(
        'layers { name: "d" type: DATA top: "data" data_param { source: "x" batch_size: 4 scale: 0.5 mirror: true '
        'crop_size: 7 mean_file: "m.binaryproto" } }'), "f")
    (layer,) = net.layer
    assert layer.type == "Data" and layer.data_param.source == "x"
    tp = layer.transform_param
    assert (tp.scale, tp.mirror, tp.crop_size, tp.mean_file) == (0.5, True, 7, "m.binaryproto")
    assert not layer.data_param.HasField("scale") and not layer.data_param.HasField("mirror")


def test_input_shape_form_and_batchnorm_params():
    net = upgrade.upgrade_net_as_needed(parse(
        'input: "a" input_shape { dim: 1 dim: 3 } input: "b" input_shape { dim: 1 }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a" param { lr_mult: 1 } param { lr_mult: 1 } '
        'param { lr_mult: 1 decay_mult: 1 } }'), "f")
    assert [layer.name for layer in net.layer] == ["input", "bn"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 3], [1]]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[1].param] == [(0, 0)] * 3


def test_shared_v1_model_files_upgrade(shared):
    v1 = shared / "models/lenet_mnist_v1format"
    net = read_net_text(v1 / "lenet.prototxt")
    assert [layer.type for layer in net.layer] == ["Input", "Convolution", "Pooling", "Convolution", "Pooling",
                                                  "InnerProduct", "ReLU", "InnerProduct", "Softmax"]
    assert list(net.layer[0].input_param.shape[0].dim) == [64, 1, 28, 28]
    weights = read_net_binary(v1 / "lenet_iter_10000.caffemodel")
    conv1 = next(layer for layer in weights.layer if layer.name == "conv1")
    assert conv1.type == "Convolution" and conv1.blobs[0].num == 20     # legacy dims kept on the blobs
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 1)]


def test_solver_type_upgrade_and_snapshot_prefix(tmp_path):
    path = tmp_path / "my_solver.prototxt"
    path.write_text('net: "n.prototxt" solver_type: ADAM base_lr: 0.1')
    solver = read_solver_text(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert solver.snapshot_prefix == str(tmp_path / "my_solver")
    (tmp_path / "snaps").mkdir()
    path.write_text(f'net: "n.prototxt" snapshot_prefix: "{tmp_path / "snaps"}"')
    assert read_solver_text(path).snapshot_prefix == str(tmp_path / "snaps" / "my_solver")
    path.write_text('net: "n.prototxt" solver_type: SGD type: "SGD"')
    with pytest.raises(CaffeUnstableError, match="cannot be both specified"):
        read_solver_text(path)
