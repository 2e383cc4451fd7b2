"""NetSpec (caffe_unstable/net_spec.py) against pycaffe's documented behaviour: the LeNet tutorial's prototxt."""
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net_spec import NetSpec, layers as L, params as P, to_proto
from caffe_unstable.proto import caffe_pb2


def lenet(lmdb, batch_size):
    """The function of Caffe's examples/01-learning-lenet.ipynb, unchanged."""
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


# What the tutorial prints for lenet('mnist/mnist_train_lmdb', 64) (the scale float printed to full precision).
LENET_TRAIN = """
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00392156862745 }
  data_param { source: "mnist/mnist_train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "score" type: "InnerProduct" bottom: "fc1" top: "score"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def parse_net(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def structure(net):
    return [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in net.layer]


def test_lenet_tutorial_prototxt():
    net = lenet('mnist/mnist_train_lmdb', 64)
    expected = parse_net(LENET_TRAIN)
    assert structure(net) == [
        ("data", "Data", [], ["data", "label"]),
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("pool1", "Pooling", ["conv1"], ["pool1"]),
        ("conv2", "Convolution", ["pool1"], ["conv2"]),
        ("pool2", "Pooling", ["conv2"], ["pool2"]),
        ("fc1", "InnerProduct", ["pool2"], ["fc1"]),
        ("relu1", "ReLU", ["fc1"], ["fc1"]),
        ("score", "InnerProduct", ["fc1"], ["score"]),
        ("loss", "SoftmaxWithLoss", ["score", "label"], ["loss"]),
    ]
    assert net == expected, text_format.MessageToString(net)
    assert str(net) == str(expected)
    conv1 = net.layer[1]
    assert conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert net.layer[0].data_param.backend == caffe_pb2.DataParameter.LMDB
    assert net.layer[0].transform_param.scale == pytest.approx(1 / 255, rel=1e-7)
    # nothing else is written: no params the user did not give
    assert not conv1.convolution_param.HasField("bias_filler")
    assert not net.layer[-1].HasField("loss_param") and len(net.layer[-1].loss_weight) == 0


def test_text_round_trip():
    net = lenet('examples/mnist/mnist_test_lmdb', 100)
    text = str(net)
    assert 'name: "relu1"' in text and "backend: LMDB" in text and "pool: MAX" in text
    back = parse_net(text)
    assert back == net
    assert back.layer[0].data_param.batch_size == 100


def test_in_place_relu_names_layer_after_assigned_top():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=4)
    n.act = L.ReLU(n.ip, in_place=True, negative_slope=0.1)
    n.out = L.Sigmoid(n.act)
    net = n.to_proto()
    assert structure(net) == [
        ("data", "Input", [], ["data"]),
        ("ip", "InnerProduct", ["data"], ["ip"]),
        ("act", "ReLU", ["ip"], ["ip"]),
        ("out", "Sigmoid", ["ip"], ["out"]),
    ]
    assert net.layer[2].relu_param.negative_slope == pytest.approx(0.1)
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3]


def test_automatic_names_count_per_type():
    data = L.Input(shape=[dict(dim=[1, 1, 8, 8])])
    c1 = L.Convolution(data, num_output=2, kernel_size=3)
    c2 = L.Convolution(c1, num_output=2, kernel_size=3)
    p = L.Pooling(c2, pool="AVE", kernel_size=2)
    net = to_proto(p)
    assert structure(net) == [
        ("Input1", "Input", [], ["Input1"]),
        ("Convolution1", "Convolution", ["Input1"], ["Convolution1"]),
        ("Convolution2", "Convolution", ["Convolution1"], ["Convolution2"]),
        ("Pooling1", "Pooling", ["Convolution2"], ["Pooling1"]),
    ]
    assert p.to_proto() == net


def test_mixed_named_and_unnamed_tops():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 4]))
    hidden = L.ReLU(L.InnerProduct(n.data, num_output=3))
    n.out = L.InnerProduct(hidden, num_output=2)
    assert structure(n.to_proto()) == [
        ("data", "Input", [], ["data"]),
        ("InnerProduct1", "InnerProduct", ["data"], ["InnerProduct1"]),
        ("ReLU1", "ReLU", ["InnerProduct1"], ["ReLU1"]),
        ("out", "InnerProduct", ["ReLU1"], ["out"]),
    ]


def test_top_used_by_several_layers_is_emitted_once():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 5]))
    n.a = L.InnerProduct(n.data, num_output=3)
    n.b = L.InnerProduct(n.data, num_output=3)
    n.sum = L.Eltwise(n.a, n.b, operation=P.Eltwise.SUM, coeff=[1, -1])
    net = n.to_proto()
    assert [lp.name for lp in net.layer] == ["data", "a", "b", "sum"]
    assert [list(lp.bottom) for lp in net.layer[1:3]] == [["data"], ["data"]]
    assert net.layer[3].eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
    assert list(net.layer[3].eltwise_param.coeff) == [1.0, -1.0]


def test_layer_parameter_fields_and_nested_messages():
    n = NetSpec()
    n.data = L.DummyData(shape=[dict(dim=[2, 3, 4, 4])], data_filler=dict(type="gaussian", std=0.5))
    n.conv = L.Convolution(n.data, num_output=6, kernel_size=3, pad=1,
                           param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                           weight_filler=dict(type="msra", variance_norm="FAN_OUT"),
                           bias_filler=dict(type="constant", value=0.1),
                           include=dict(phase=caffe_pb2.TEST), propagate_down=[True])
    lp = n.to_proto().layer[1]
    assert [(p.lr_mult, p.decay_mult) for p in lp.param] == [(1, 1), (2, 0)]
    assert len(lp.include) == 1 and lp.include[0].phase == caffe_pb2.TEST
    assert list(lp.propagate_down) == [True]
    cp = lp.convolution_param
    assert (cp.num_output, list(cp.kernel_size), list(cp.pad)) == (6, [3], [1])
    assert cp.weight_filler.variance_norm == caffe_pb2.FillerParameter.FAN_OUT
    assert cp.bias_filler.value == pytest.approx(0.1)
    dd = n.to_proto().layer[0].dummy_data_param
    assert list(dd.shape[0].dim) == [2, 3, 4, 4] and dd.data_filler[0].std == pytest.approx(0.5)


def test_enum_values_by_name_and_number():
    by_name = to_proto(L.Pooling(L.Input(), pool="STOCHASTIC", kernel_size=2)).layer[1]
    by_value = to_proto(L.Pooling(L.Input(), pool=P.Pooling.STOCHASTIC, kernel_size=2)).layer[1]
    assert by_name.pooling_param.pool == by_value.pooling_param.pool == 2
    assert P.Pooling.MAX == 0 and P.Pooling.AVE == 1
    assert P.Data.LMDB == 1 and P.Loss.VALID == 1 and P.Filler.AVERAGE == 2
    assert P.Pooling.PoolMethod.Name(1) == "AVE"
    phase = to_proto(L.Dropout(L.Input(), include=dict(phase="TRAIN"), phase="TEST")).layer[1]
    assert phase.include[0].phase == caffe_pb2.TRAIN and phase.phase == caffe_pb2.TEST
    with pytest.raises(AttributeError, match="PoolingParameter has no enum value 'MEDIAN'"):
        P.Pooling.MEDIAN
    with pytest.raises(CaffeUnstableError, match=r"pool: unknown value 'MEDIAN' \(one of: MAX, AVE, STOCHASTIC\)"):
        to_proto(L.Pooling(L.Input(), pool="MEDIAN"))


def test_special_types_name_and_loss_weight():
    n = NetSpec()
    n.x, n.y = L.Input(shape=[dict(dim=[2, 3, 4, 4]), dict(dim=[2, 1, 4, 4])], ntop=2)
    n.up = L.Deconvolution(n.x, num_output=3, kernel_size=2, stride=2, bias_term=False, name="upsample")
    n.loss = L.SoftmaxWithLoss(n.x, n.y, ignore_label=255, normalization="VALID", axis=1, loss_weight=0.5)
    n.silence = L.Silence(n.up, ntop=0)
    net = n.to_proto()
    assert structure(net) == [
        ("x", "Input", [], ["x", "y"]),
        ("upsample", "Deconvolution", ["x"], ["up"]),
        ("loss", "SoftmaxWithLoss", ["x", "y"], ["loss"]),
        ("silence", "Silence", ["up"], []),
    ]
    up, loss = net.layer[1], net.layer[2]
    assert up.convolution_param.num_output == 3 and up.convolution_param.bias_term is False
    assert loss.loss_param.ignore_label == 255 and loss.loss_param.normalization == P.Loss.VALID
    assert loss.softmax_param.axis == 1 and list(loss.loss_weight) == [0.5]


def test_unnamed_layer_without_tops():
    net = to_proto(L.Silence(L.Input(), ntop=0))
    assert structure(net) == [("Input1", "Input", [], ["Input1"]), ("Silence1", "Silence", ["Input1"], [])]


def test_python_layer_params():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[3]))
    n.out = L.Python(n.data, module="my_layers", layer="Scale10", param_str='{"k": 10}', loss_weight=1)
    lp = n.to_proto().layer[1]
    assert (lp.python_param.module, lp.python_param.layer, lp.python_param.param_str) == \
        ("my_layers", "Scale10", '{"k": 10}')
    assert list(lp.loss_weight) == [1.0]
    explicit = to_proto(L.Python(L.Input(), python_param=dict(module="m", layer="C"))).layer[1]
    assert explicit.python_param.module == "m" and explicit.python_param.layer == "C"


def test_netspec_mapping_access():
    n = NetSpec()
    n["data"] = L.Input(shape=dict(dim=[1]))
    n.tanh = L.TanH(n["data"])
    assert n.keys() == ["data", "tanh"] and n.vals() == [n.data, n.tanh]
    assert "tanh" in n
    del n["tanh"]
    assert n.keys() == ["data"]
    with pytest.raises(AttributeError):
        n.missing


def test_errors():
    with pytest.raises(TypeError, match="ReLU input 0 is not a Top"):
        L.ReLU("data")
    with pytest.raises(CaffeUnstableError,
                       match=r"layer 'conv': Convolution has no parameter 'kernal_size' .*convolution_param"):
        n = NetSpec()
        n.data = L.Input()
        n.conv = L.Convolution(n.data, kernal_size=3)
        n.to_proto()
    with pytest.raises(CaffeUnstableError, match=r"InnerProductParameter.num_output: cannot take 'ten'"):
        to_proto(L.InnerProduct(L.Input(), num_output="ten"))
