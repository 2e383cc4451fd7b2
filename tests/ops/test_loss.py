"""Loss layers (caffe_unstable/ops/loss.py) against golden Caffe data, hand-computed values and numerical
gradients."""
import h5py
import numpy as np
import pytest

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.blob import Blob
from caffe_unstable.proto import caffe_pb2
from tests.ops.gradcheck import check_gradient, layer_from_text
from tests.ops.test_neuron import assert_golden, run_golden_layers

LOG_FLT_MIN = 87.33654  # -log(FLT_MIN): what a hopeless sample adds


def loss_run(text, *arrays, weight=1.0, num_tops=1, propagate_down=None):
    """Setup + forward + backward with loss weight `weight` (top[0].diff, as Caffe stores it); returns
    (layer, top, bottom)."""
    layer = layer_from_text(text)
    bottom = []
    for a in arrays:
        b = Blob(np.shape(a))
        b.data[...] = a
        bottom.append(b)
    top = [Blob() for _ in range(num_tops)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = weight
    if propagate_down is None:
        propagate_down = [i != 1 for i in range(len(bottom))]
    layer.backward(top, propagate_down, bottom)
    return layer, top, bottom


def error_of(text, *arrays, propagate_down=None):
    with pytest.raises(CaffeUnstableError) as info:
        loss_run(text, *arrays, propagate_down=propagate_down)
    return info.value.what


# -- golden ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["softmaxloss_valid_ignore", "softmaxloss_batchsize", "softmaxloss_full_none",
                                  "euclidean_loss", "sigmoid_xent_loss"])
def test_golden(shared, case):
    assert_golden(shared, case)


def test_golden_two_losses_sum_like_the_split(shared):
    """softmaxloss_full_none: each loss checked alone above (against its split top's diff); their sum is the
    bottom diff Caffe's Split layer produced."""
    pairs = run_golden_layers(shared, "softmaxloss_full_none")
    total = pairs["scores_input_0_split_0 diff (loss_full)"][0] + pairs["scores_input_0_split_1 diff (loss_none)"][0]
    with h5py.File(shared / "golden" / "layers" / "softmaxloss_full_none.h5", "r") as h5:
        np.testing.assert_allclose(total, h5["blobs/scores/diff"][()], rtol=1e-4, atol=1e-5)
        assert abs(pairs["loss_none data"][0] / 12 - h5["blobs/loss_full/data"][()]) < 1e-5  # NONE = FULL * N*H*W


# -- SoftmaxWithLoss -------------------------------------------------------------------------------------------

SCORES = np.array([[0.0, np.log(3.0)], [0.0, 0.0], [2.0, 1.0], [0.0, 1.0]], np.float32)  # 4 samples, 2 classes
LABELS = np.array([1, 0, 7, 0], np.float32)  # label 7 is the ignore_label below
P = np.array([[0.25, 0.75], [0.5, 0.5], [0, 0], [1 / (1 + np.e), np.e / (1 + np.e)]])
NLL = -np.log([0.75, 0.5, 1 / (1 + np.e)]).sum()


@pytest.mark.parametrize("loss_param, norm", [
    ("", 3), ("normalization: VALID", 3), ("normalization: FULL", 4), ("normalization: BATCH_SIZE", 4),
    ("normalization: NONE", 1), ("normalize: true", 3), ("normalize: false", 4),
    ("normalize: false normalization: VALID", 3),  # normalization wins over the legacy field
])
def test_softmax_loss_normalization(loss_param, norm):
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 7 {loss_param} }}'
    _, top, bottom = loss_run(text, SCORES, LABELS, weight=2.0)
    np.testing.assert_allclose(top[0].data, NLL / norm, rtol=1e-6)  # the top is the UNweighted loss
    expected = P.copy()
    expected[[0, 1, 3], [1, 0, 0]] -= 1
    np.testing.assert_allclose(bottom[0].diff, 2.0 * expected / norm, rtol=1e-5, atol=1e-7)
    assert not bottom[0].diff[2].any()  # ignored position: zero gradient


def test_softmax_loss_all_ignored_divides_by_one():
    _, top, bottom = loss_run('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', SCORES[2:3], LABELS[2:3])
    assert top[0].data == 0 and not bottom[0].diff.any()


def test_softmax_loss_clamps_hopeless_samples_at_flt_min():
    _, top, _ = loss_run('type: "SoftmaxWithLoss"', np.array([[0.0, 200.0]], np.float32), np.array([0], np.float32))
    np.testing.assert_allclose(top[0].data, LOG_FLT_MIN, rtol=1e-6)


def test_softmax_loss_spatial_labels_are_truncated():
    scores = np.random.default_rng(0).normal(size=(2, 3, 2, 2)).astype(np.float32)
    labels = np.array([0.9, 1.2, 2.99, 0.0, 1.0, 2.0, 2.5, 1.7], np.float32).reshape(2, 1, 2, 2)
    _, top, _ = loss_run('type: "SoftmaxWithLoss"', scores, labels)
    s = scores.astype(np.float64)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    idx = labels.astype(int).reshape(2, 2, 2)
    picked = np.take_along_axis(p, idx[:, None], axis=1)
    np.testing.assert_allclose(top[0].data, -np.log(picked).mean(), rtol=1e-5)


def test_softmax_loss_second_top_is_the_probabilities():
    text = 'type: "SoftmaxWithLoss" loss_weight: 1 loss_weight: 0 loss_param { ignore_label: 7 }'
    _, top, _ = loss_run(text, SCORES, LABELS, num_tops=2)
    assert top[1].shape == SCORES.shape
    np.testing.assert_allclose(top[1].data[[0, 1, 3]], P[[0, 1, 3]], rtol=1e-6)


def test_softmax_loss_gradient():
    labels = np.array([[0, 2], [1, 1], [2, 0]], np.float32).reshape(3, 1, 2)
    check_gradient(lambda: layer_from_text('type: "SoftmaxWithLoss" loss_param { normalization: FULL }'),
                   [(3, 3, 2), (3, 1, 2)], bottom_data=[None, labels], check_bottoms=[0])
    check_gradient(lambda: layer_from_text('type: "SoftmaxWithLoss" softmax_param { axis: -1 }'),
                   [(2, 3, 4), (2, 3)], bottom_data=[None, np.array([[0, 3, 1], [2, 2, 0]])], check_bottoms=[0])


def test_softmax_loss_errors():
    assert error_of('type: "SoftmaxWithLoss"', SCORES, LABELS[:3]) == \
        "The data and label should have the same first dimension."
    assert error_of('type: "SoftmaxWithLoss"', SCORES, np.zeros((4, 2), np.float32)).startswith(
        "Number of labels must match number of predictions;")
    assert error_of('type: "SoftmaxWithLoss"', SCORES, LABELS) == \
        "label value 7 out of range [0, 2) (labels must be integers in {0, ..., C-1}, or loss_param.ignore_label)"
    assert error_of('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', SCORES, LABELS,
                    propagate_down=[True, True]) == "SoftmaxWithLoss Layer cannot backpropagate to label inputs."


def test_loss_layer_class_facts():
    layer = layer_from_text('type: "EuclideanLoss"')
    assert layer.is_loss and layer.auto_top_blobs
    assert layer.allow_force_backward(1)  # EuclideanLoss: both bottoms may get a gradient
    assert not layer_from_text('type: "SoftmaxWithLoss"').allow_force_backward(1)
    contrastive = layer_from_text('type: "ContrastiveLoss"')
    assert contrastive.allow_force_backward(1) and not contrastive.allow_force_backward(2)


# -- EuclideanLoss, SigmoidCrossEntropyLoss ----------------------------------------------------------------------

def test_euclidean_known_values():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[0.0, 2.0], [3.0, 1.0]], np.float32)
    _, top, bottom = loss_run('type: "EuclideanLoss"', a, b, weight=3.0, propagate_down=[True, True])
    assert top[0].data == pytest.approx((1 + 9) / 4)
    np.testing.assert_allclose(bottom[0].diff, 3.0 * (a - b) / 2)
    np.testing.assert_allclose(bottom[1].diff, -3.0 * (a - b) / 2)


def test_euclidean_gradient_and_errors():
    check_gradient(lambda: layer_from_text('type: "EuclideanLoss"'), [(3, 2, 2), (3, 4)])
    assert error_of('type: "EuclideanLoss"', np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)) == \
        "Inputs must have the same dimension."


def test_sigmoid_xent_known_values_ignore_and_normalization():
    x = np.array([[0.0, 2.0], [-1.0, 30.0]], np.float32)
    t = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)  # -1 ignored below
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    terms = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    _, top, bottom = loss_run('type: "SigmoidCrossEntropyLoss"', x[:, :1], np.array([[1.0], [0.0]], np.float32))
    np.testing.assert_allclose(top[0].data, (np.log(2) + np.log1p(np.exp(-1))) / 2, rtol=1e-6)  # BATCH_SIZE = 2
    _, top, bottom = loss_run('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }',
                              x, t, weight=2.0)
    valid = t != -1
    np.testing.assert_allclose(top[0].data, terms[valid].sum() / 3, rtol=1e-5)
    np.testing.assert_allclose(bottom[0].diff, np.where(valid, 2.0 * (s - t) / 3, 0), rtol=1e-5, atol=1e-7)


def test_sigmoid_xent_gradient():
    t = np.random.default_rng(3).uniform(size=(3, 4))
    check_gradient(lambda: layer_from_text('type: "SigmoidCrossEntropyLoss"'), [(3, 4), (3, 4)],
                   bottom_data=[None, t], check_bottoms=[0], scale=2.0)


# -- InfogainLoss --------------------------------------------------------------------------------------------------

def write_matrix(path, h):
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend(h.shape)
    proto.data.extend(h.ravel().tolist())
    path.write_bytes(proto.SerializeToString())
    return path


def test_infogain_identity_is_softmax_loss(tmp_path):
    source = write_matrix(tmp_path / "h.binaryproto", np.eye(2, dtype=np.float32))
    labels = np.array([1, 0, 1, 0], np.float32)
    _, ours, ours_b = loss_run(f'type: "InfogainLoss" infogain_loss_param {{ source: "{source}" }}', SCORES, labels)
    _, ref, ref_b = loss_run('type: "SoftmaxWithLoss"', SCORES, labels)
    np.testing.assert_allclose(ours[0].data, ref[0].data, rtol=1e-6)
    np.testing.assert_allclose(ours_b[0].diff, ref_b[0].diff, rtol=1e-5, atol=1e-7)


def test_infogain_known_value_with_matrix_bottom():
    h = np.array([[1.0, 0.5], [0.0, 2.0]], np.float32)
    scores = np.array([[0.0, np.log(3.0)]], np.float32)  # p = (0.25, 0.75)
    _, top, bottom = loss_run('type: "InfogainLoss"', scores, np.array([0], np.float32), h,
                              propagate_down=[True, False, False])
    np.testing.assert_allclose(top[0].data, -(np.log(0.25) + 0.5 * np.log(0.75)), rtol=1e-6)
    # dx_l = p_l * sum_k H[label, k] - H[label, l]
    np.testing.assert_allclose(bottom[0].diff, [[0.25 * 1.5 - 1.0, 0.75 * 1.5 - 0.5]], rtol=1e-6)


def test_infogain_gradient():
    h = np.random.default_rng(5).uniform(size=(3, 3))
    labels = np.array([[0, 2], [1, 1]]).reshape(2, 1, 2)
    check_gradient(lambda: layer_from_text('type: "InfogainLoss" loss_param { ignore_label: 1 }'),
                   [(2, 3, 2), (2, 1, 2), (3, 3)], bottom_data=[None, labels, h], check_bottoms=[0])


def test_infogain_errors(tmp_path):
    x, lab = SCORES, np.zeros(4, np.float32)
    assert error_of('type: "InfogainLoss"', x, lab) == "Infogain matrix source must be specified."
    assert error_of('type: "InfogainLoss" loss_param { normalize: true }', x, lab, np.eye(2)) == \
        'normalize is deprecated. use "normalization"'
    assert error_of('type: "InfogainLoss"', x, lab, np.eye(3)) == "H must be 2x2 (got 9 values)"
    missing = tmp_path / "none.binaryproto"
    assert error_of(f'type: "InfogainLoss" infogain_loss_param {{ source: "{missing}" }}', x, lab) == \
        f"File not found: {missing}"
    assert error_of('type: "InfogainLoss"', x, lab, np.eye(2), propagate_down=[True, False, True]) == \
        "InfogainLoss Layer cannot backpropagate to infogain inputs."


# -- MultinomialLogisticLoss, HingeLoss, ContrastiveLoss -------------------------------------------------------------

def test_multinomial_logistic_known_values():
    p = np.array([[0.2, 0.8], [0.0, 1.0]], np.float32)
    _, top, bottom = loss_run('type: "MultinomialLogisticLoss"', p, np.array([1, 0], np.float32), weight=2.0)
    np.testing.assert_allclose(top[0].data, (-np.log(0.8) - np.log(1e-20)) / 2, rtol=1e-6)  # clamp at 1e-20
    np.testing.assert_allclose(bottom[0].diff, [[0, -1 / 0.8], [-1 / 1e-20, 0]], rtol=1e-6)


def test_multinomial_logistic_gradient_and_label_shape():
    p = np.random.default_rng(6).uniform(0.2, 1.0, size=(3, 4))
    check_gradient(lambda: layer_from_text('type: "MultinomialLogisticLoss"'), [(3, 4), (3,)],
                   bottom_data=[p, np.array([0, 3, 1])], check_bottoms=[0], eps=1e-3)
    assert error_of('type: "MultinomialLogisticLoss"', p, np.zeros((3, 2), np.float32)).startswith(
        "the label blob must be (N, 1, 1, 1) or (N,)")


@pytest.mark.parametrize("norm, loss, dx", [
    ("L1", (1.5 + 0.0 + 1.2) / 2, [[-0.5, 0.0, 0.0], [0.0, 0.0, 0.5]]),
    ("L2", (2.25 + 0.0 + 1.44) / 2, [[-1.5, 0.0, 0.0], [0.0, 0.0, 1.2]]),
])
def test_hinge_known_values(norm, loss, dx):
    x = np.array([[-0.5, -1.0, -3.0], [-2.0, 1.0, 0.2]], np.float32)  # t = max(0, 1 + d x), d = -1 at the label
    _, top, bottom = loss_run(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', x,
                              np.array([0, 1], np.float32))
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-6)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-6)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient(norm):
    rng = np.random.default_rng(7)
    x = rng.choice([-3.0, -1.5, -0.5, 0.3, 0.5, 1.5, 3.0], size=(3, 4)) + rng.uniform(-0.1, 0.1, (3, 4))  # no kink
    check_gradient(lambda: layer_from_text(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'), [(3, 4), (3,)],
                   bottom_data=[x, np.array([0, 3, 2])], check_bottoms=[0])


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_known_values(legacy):
    a = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32).reshape(3, 2, 1, 1)
    b = np.array([[0.3, 0.4], [0.3, 0.4], [3.0, 4.0]], np.float32).reshape(3, 2, 1, 1)  # distances 0.5, 0.5, 5
    sim = np.array([1, 0, 0], np.float32).reshape(3, 1, 1, 1)
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 2 legacy_version: {str(legacy).lower()} }}'
    _, top, bottom = loss_run(text, a, b, sim, weight=1.0, propagate_down=[True, True, False])
    dissimilar = (2 - 0.25) if legacy else (2 - 0.5) ** 2
    np.testing.assert_allclose(top[0].data, (0.25 + dissimilar) / 6, rtol=1e-6)
    diff = (a - b).reshape(3, 2)
    beta = 1.0 if legacy else (2 - 0.5) / (0.5 + 1e-4)
    expected = np.stack([diff[0] / 3, -beta * diff[1] / 3, [0.0, 0.0]])
    np.testing.assert_allclose(bottom[0].diff.reshape(3, 2), expected, rtol=1e-5)
    np.testing.assert_allclose(bottom[1].diff.reshape(3, 2), -expected, rtol=1e-5)


@pytest.mark.parametrize("legacy", ["false", "true"])
def test_contrastive_gradient(legacy):
    sim = np.array([1, 0, 0, 1, 0]).reshape(5, 1, 1, 1)
    margin = 4.5 if legacy == "true" else 3  # keeps every distance of this draw away from the hinge
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} legacy_version: {legacy} }}'
    check_gradient(lambda: layer_from_text(text), [(5, 3, 1, 1), (5, 3, 1, 1), (5, 1, 1, 1)],
                   bottom_data=[None, None, sim], check_bottoms=[0, 1], scale=0.7)
