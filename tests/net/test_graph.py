"""Net construction: include/exclude rules, Split insertion, backward-need analysis, sharing, loss weights."""
import re

import numpy as np
import pytest

import caffe_unstable as caffe
from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net import graph
from caffe_unstable.proto import caffe_pb2
from google.protobuf import text_format


def net_from_text(tmp_path, text, phase=caffe.TEST, **kwargs):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase, rng=0, **kwargs)


def _log_section(log_text, start_marker):
    lines = log_text.split("\n")
    start = next(i for i, ln in enumerate(lines) if start_marker in ln)
    return lines[start:]


def test_tiny_lenet_test_net_matches_caffe_log(shared, monkeypatch):
    """Layer order (Splits included), backward needs and outputs as Caffe logged them (golden sgd_step.log)."""
    monkeypatch.chdir(shared / "golden/solvers")
    net = caffe.Net("tiny_lenet.prototxt", caffe.TEST)
    section = _log_section((shared / "golden/solvers/logs/sgd_step.log").read_text(), "Creating test net (#0)")
    created = [m.group(1) for ln in section if (m := re.search(r"net\.cpp:86\] Creating Layer (\S+)", ln))]
    assert net._layer_names == created
    assert "label_data_1_split" in created and "ip2_ip2_0_split" in created
    needs = {}
    for ln in section:
        m = re.search(r"\] (\S+) (needs|does not need) backward computation\.", ln)
        if m:
            needs[m.group(1)] = m.group(2) == "needs"
        if "Network initialization done" in ln:
            break
    assert dict(zip(net._layer_names, net.layer_need_backward)) == needs
    assert net.outputs == ["accuracy", "loss"]
    assert net.bottom_names["accuracy"] == ["ip2_ip2_0_split_0", "label_data_1_split_0"]
    assert net.bottom_names["loss"] == ["ip2_ip2_0_split_1", "label_data_1_split_1"]


def test_include_exclude_level_and_stage():
    text = '''name: "n" state { level: 2 stage: "deploy" }
    layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }
    layer { name: "train_only" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } }
    layer { name: "lvl" type: "ReLU" bottom: "x" top: "x" include { min_level: 2 } }
    layer { name: "lvl_hi" type: "ReLU" bottom: "x" top: "x" include { min_level: 3 } }
    layer { name: "stage" type: "ReLU" bottom: "x" top: "x" include { stage: "deploy" } }
    layer { name: "not_stage" type: "ReLU" bottom: "x" top: "x" include { not_stage: "deploy" } }
    layer { name: "excl" type: "ReLU" bottom: "x" top: "x" exclude { phase: TEST } }
    layer { name: "any" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } include { stage: "deploy" } }
    '''
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    param.state.phase = caffe_pb2.TEST
    kept = [layer.name for layer in graph.filter_net(param).layer]
    assert kept == ["a", "lvl", "stage", "any"]
    param.layer[1].exclude.add(phase=caffe_pb2.TEST)
    with pytest.raises(CaffeUnstableError, match="either include rules or exclude rules"):
        graph.filter_net(param)


def test_split_of_a_top_with_explicit_loss_weight():
    text = '''layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "p" type: "Power" bottom: "x" top: "y" loss_weight: 2 }
    layer { name: "q" type: "ReLU" bottom: "y" top: "z" }'''
    param = graph.insert_splits(text_format.Parse(text, caffe_pb2.NetParameter()))
    names = [layer.name for layer in param.layer]
    assert names == ["in", "p", "y_p_0_split", "q"]
    split = param.layer[2]
    assert list(split.top) == ["y_p_0_split_0", "y_p_0_split_1"] and list(split.loss_weight) == [2.0, 0.0]
    assert list(param.layer[1].loss_weight) == [] and list(param.layer[3].bottom) == ["y_p_0_split_1"]


def test_two_losses_on_one_bottom_sum_in_the_split(tmp_path):
    net = net_from_text(tmp_path, '''force_backward: true
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "l1" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l1" }
    layer { name: "l2" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l2" loss_weight: 3 }''')
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    net.blobs["a"].data[...] = a
    net.blobs["b"].data[...] = b
    loss = net.forward_backward()
    expected = ((a - b) ** 2).sum() / 8
    np.testing.assert_allclose(loss, 4 * expected, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["a"].diff, 4 * (a - b) / 4, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["b"].diff, -4 * (a - b) / 4, rtol=1e-5)


def test_shared_params_accumulate_and_are_one_learnable(tmp_path):
    net = net_from_text(tmp_path, '''force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } param { name: "b" }
      inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" lr_mult: 2 } param { name: "b" }
      inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
    layer { name: "loss" type: "Reduction" bottom: "s" top: "loss" loss_weight: 1 }''')
    assert net.params["ip_a"][0] is net.params["ip_b"][0]
    assert len(net.learnable_params) == 2 and net.params_lr == [2.0, 1.0]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    net.blobs["x"].data[...] = x
    net.forward_backward()
    # d loss / dW = sum over both users = 2 * ones(4,1) @ x.sum(0)
    np.testing.assert_allclose(net.params["ip_a"][0].diff, 2 * np.tile(x.sum(0), (4, 1)), rtol=1e-6)


def test_shared_param_shape_mismatch(tmp_path):
    with pytest.raises(CaffeUnstableError, match="Cannot share param 'w' owned by layer 'ip_a' with layer 'ip_b'; "
                                                 "shape mismatch"):
        net_from_text(tmp_path, '''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip_a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" }
          inner_product_param { num_output: 4 } }
        layer { name: "ip_b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
          inner_product_param { num_output: 5 } }''')


def test_backward_need_respects_lr_mult_zero_and_propagate_down(tmp_path):
    net = net_from_text(tmp_path, '''
    layer { name: "in" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "frozen" type: "InnerProduct" bottom: "x" top: "f" param { lr_mult: 0 } param { lr_mult: 0 }
      inner_product_param { num_output: 3 } }
    layer { name: "ip" type: "InnerProduct" bottom: "f" top: "y" inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" propagate_down: true
      propagate_down: false }''')
    assert net.layer_need_backward == [False, False, True, True]
    assert net.bottom_need_backward[3] == [True, False]
    assert net.bottom_need_backward[2] == [False]


def test_in_place_and_duplicate_tops(tmp_path):
    net = net_from_text(tmp_path, '''
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }''')
    assert list(net.blobs) == ["x"] and net.outputs == ["x"]
    with pytest.raises(CaffeUnstableError, match="Top blob 'y' produced by multiple sources."):
        net_from_text(tmp_path, '''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "r1" type: "ReLU" bottom: "x" top: "y" }
        layer { name: "r2" type: "ReLU" bottom: "x" top: "y" }''')


def test_loss_weight_count_must_match_tops(tmp_path):
    with pytest.raises(CaffeUnstableError, match="loss_weight must be unspecified or specified once per top blob"):
        net_from_text(tmp_path, '''
        layer { name: "in" type: "Input" top: "x" top: "l" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "l" top: "loss" top: "prob" }''')


def test_fillers_follow_caffe_formulas(tmp_path):
    net = net_from_text(tmp_path, '''
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 100 dim: 8 dim: 8 } } }
    layer { name: "xav" type: "Convolution" bottom: "x" top: "a" convolution_param { num_output: 200 kernel_size: 3
      weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.5 } } }
    layer { name: "msra" type: "Convolution" bottom: "x" top: "b" convolution_param { num_output: 200 kernel_size: 3
      weight_filler { type: "msra" variance_norm: FAN_OUT } } }
    layer { name: "bil" type: "Deconvolution" bottom: "x" top: "c" convolution_param { num_output: 100 group: 100
      kernel_size: 4 stride: 2 bias_term: false weight_filler { type: "bilinear" } } }''')
    w = net.params["xav"][0].data
    a = np.sqrt(3.0 / (100 * 9))
    assert w.min() >= -a and w.max() <= a and abs(w.std() - a / np.sqrt(3)) < 0.02 * a
    np.testing.assert_array_equal(net.params["xav"][1].data, 0.5)
    np.testing.assert_allclose(net.params["msra"][0].data.std(), np.sqrt(2.0 / (200 * 9)), rtol=0.02)
    np.testing.assert_allclose(net.params["bil"][0].data[0, 0],
                               np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]), rtol=1e-6)
