"""Central-difference gradient check of a layer, as Caffe's test_gradient_check_util.hpp.

    from tests.ops.gradcheck import check_gradient, layer_from_text

    check_gradient(lambda: layer_from_text('type: "ReLU" relu_param { negative_slope: 0.1 }'),
                   [(2, 3, 4, 5)], kink=0.0, kink_range=1e-2)

The loss is L = sum_t sum(top_t.data * topdiff_t) with random top diffs, accumulated in float64. Each checked
element x (bottom or param) is perturbed by +/- eps, the layer re-runs reshape + forward, and the numerical
derivative (L+ - L-) / (2 eps) is compared with what `backward` wrote (bottom diffs overwritten, param diffs
accumulated from zero). Like Caffe's checker, the tolerance is scaled: |a - n| <= atol + rtol * max(|a|, |n|, 1).
Layers compute in float32, so eps is 1e-2 by default (Caffe's stepsize) and rtol 1e-2 (its threshold).

Also here: run_golden_layer / assert_golden_layer run one layer of a golden/layers case by hand (no Net) and
compare every blob and parameter gradient with real Caffe's.
"""
import numpy as np
from google.protobuf import text_format

from caffe_unstable.net.blob import Blob
from caffe_unstable.ops import layer_class
from caffe_unstable.proto import caffe_pb2


def layer_from_text(text, phase=caffe_pb2.TEST, seed=0, name="layer"):
    """Build a layer from LayerParameter text (fields inside `layer { ... }`)."""
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    if not lp.name:
        lp.name = name
    lp.phase = phase
    return layer_class(lp.type)(lp, np.random.default_rng(seed))


def _loss(top, top_diffs, top_indices):
    return sum(float(np.dot(top[i].data.astype(np.float64).ravel(), top_diffs[i].ravel())) for i in top_indices)


def _pick(count, max_checks, rng):
    if max_checks is None or count <= max_checks:
        return np.arange(count)
    return np.sort(rng.choice(count, max_checks, replace=False))


def check_gradient(layer_factory, bottom_shapes, *, bottom_data=None, num_tops=1, top_indices=None,
                   check_bottoms=None, check_params=True, random_params=True, eps=1e-2, rtol=1e-2,
                   atol=1e-3, kink=None, kink_range=-1.0, max_checks=None, seed=1701, scale=1.0):
    """Check `backward` of the layer built by `layer_factory()` against central differences.

    bottom_shapes: one shape per bottom (data drawn N(0, scale^2) unless `bottom_data[i]` is given).
    num_tops: how many top Blobs to create. top_indices: tops that contribute to the loss (default all).
    check_bottoms: bottom indices to check (default all). check_params: also check every param blob.
    random_params: after setup, overwrite param data with N(0, 1) so zero-filled params still test something.
    kink/kink_range: skip elements whose value is within kink_range of kink (non-differentiable points).
    max_checks: check at most this many randomly chosen elements per blob (keeps big tests fast).
    Returns the largest scaled error seen; raises AssertionError listing the first mismatches.
    """
    rng = np.random.default_rng(seed)
    layer = layer_factory()
    bottom = []
    for i, shape in enumerate(bottom_shapes):
        b = Blob(shape)
        if bottom_data is not None and bottom_data[i] is not None:
            b.data[...] = bottom_data[i]
        else:
            b.data[...] = rng.normal(0.0, scale, shape)
        bottom.append(b)
    top = [Blob() for _ in range(num_tops)]
    layer.setup(bottom, top)
    if random_params:
        for p in layer.blobs:
            p.data[...] = rng.normal(0.0, 1.0, p.shape)
    top_indices = list(range(num_tops)) if top_indices is None else list(top_indices)
    check_bottoms = list(range(len(bottom))) if check_bottoms is None else list(check_bottoms)

    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top_diffs = [rng.normal(0.0, 1.0, t.shape) if i in top_indices else np.zeros(t.shape) for i, t in enumerate(top)]
    for t, d in zip(top, top_diffs):
        t.diff[...] = d
    for p in layer.blobs:
        p.diff[...] = 0
    layer.param_propagate_down = [True] * len(layer.blobs)
    propagate_down = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, propagate_down, bottom)

    targets = [(f"bottom {i}", bottom[i], bottom[i].diff.astype(np.float64).copy()) for i in check_bottoms]
    if check_params:
        targets += [(f"param {j}", p, p.diff.astype(np.float64).copy()) for j, p in enumerate(layer.blobs)]

    failures, worst = [], 0.0
    for label, blob, analytic in targets:
        flat = blob.data.reshape(-1)
        for k in _pick(flat.size, max_checks, rng):
            x0 = flat[k]
            if kink is not None and abs(float(x0) - kink) < kink_range:
                continue
            flat[k] = x0 + eps
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            lp = _loss(top, top_diffs, top_indices)
            flat[k] = x0 - eps
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            lm = _loss(top, top_diffs, top_indices)
            flat[k] = x0
            numeric = (lp - lm) / (2.0 * eps)
            a = analytic.reshape(-1)[k]
            err = abs(a - numeric) / max(abs(a), abs(numeric), 1.0)
            worst = max(worst, err)
            if abs(a - numeric) > atol + rtol * max(abs(a), abs(numeric), 1.0):
                failures.append(f"{label}{tuple(int(i) for i in np.unravel_index(k, blob.shape))}: analytic {a:.6g} numeric {numeric:.6g}")
    if failures:
        raise AssertionError(f"{len(failures)} gradient mismatches:\n" + "\n".join(failures[:10]))
    return worst


def run_golden_layer(case, golden_dir, layer_index=-1):
    """Run one layer of golden/layers/<case> by hand (no Net): load inputs and params, forward, backward.

    Returns (layer, blobs, h5file) where blobs maps blob name -> Blob after backward; compare against
    h5["blobs/<name>/data|diff"] and h5["params/<layer>/<i>/diff"]. The caller closes h5file.
    """
    import h5py

    path = golden_dir / "layers" / case
    h5 = h5py.File(str(path) + ".h5", "r")
    net = caffe_pb2.NetParameter()
    text_format.Parse(open(str(path) + ".prototxt").read(), net)
    lp = net.layer[layer_index]
    lp.phase = caffe_pb2.TRAIN if h5.attrs["phase"] == "TRAIN" else caffe_pb2.TEST
    layer = layer_class(lp.type)(lp, np.random.default_rng(0))
    blobs = {}
    for name in h5["inputs"]:
        blobs[name] = Blob(h5["inputs"][name].shape)
        blobs[name].data[...] = h5["inputs"][name][()]
    bottom = [blobs[n] for n in lp.bottom]
    top = []
    for n in lp.top:
        blobs.setdefault(n, Blob())
        top.append(blobs[n])
    if f"params/{lp.name}" in h5:
        grp = h5[f"params/{lp.name}"]
        layer.blobs = []
        for i in range(len(grp)):
            b = Blob(grp[str(i)]["data"].shape)
            b.data[...] = grp[str(i)]["data"][()]
            layer.blobs.append(b)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    if h5.attrs["backward"]:
        for i, (n, t) in enumerate(zip(lp.top, top)):
            if f"top_diffs_given/{n}" in h5:
                t.diff[...] = h5[f"top_diffs_given/{n}"][()]
            else:  # a loss top: Caffe keeps its loss weight in the diff
                t.diff[...] = lp.loss_weight[i] if i < len(lp.loss_weight) else float(layer.is_loss and i == 0)
        layer.param_propagate_down = [True] * len(layer.blobs)
        # force_backward: every bottom the layer allows (loss layers never take one into their labels)
        layer.backward(top, [layer.allow_force_backward(i) for i in range(len(bottom))], bottom)
    return layer, blobs, h5


def assert_golden_layer(case, golden_dir, rtol=1e-4, atol=1e-5, exact=()):
    """run_golden_layer + compare every blob's data/diff and every param diff; `exact` names integer blobs.

    Returns {what: max abs diff}.
    """
    layer, blobs, h5 = run_golden_layer(case, golden_dir)
    report = {}
    try:
        for name, blob in blobs.items():
            for kind in ("data", "diff"):
                key = f"blobs/{name}/{kind}"
                if key not in h5 or (kind == "diff" and not h5.attrs["backward"]):
                    continue
                if kind == "diff" and name in exact:
                    continue  # Caffe leaves the mask top's diff alone; nothing to compare
                if kind == "diff" and name in layer.param.bottom and \
                        not layer.allow_force_backward(list(layer.param.bottom).index(name)):
                    continue  # no gradient flows into a label
                want = h5[key][()]
                got = getattr(blob, kind)
                assert got.shape == want.shape, f"{key}: shape {got.shape} != {want.shape}"
                if name in exact and kind == "data":
                    np.testing.assert_array_equal(got, want, err_msg=key)
                else:
                    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=key)
                report[key] = float(np.max(np.abs(got - want))) if want.size else 0.0
        if f"params/{layer.name}" in h5 and h5.attrs["backward"]:
            grp = h5[f"params/{layer.name}"]
            for i, p in enumerate(layer.blobs):
                want = grp[str(i)]["diff"][()]
                np.testing.assert_allclose(p.diff, want, rtol=rtol, atol=atol, err_msg=f"param {i} diff")
                report[f"params/{i}/diff"] = float(np.max(np.abs(p.diff - want)))
    finally:
        h5.close()
    return report
