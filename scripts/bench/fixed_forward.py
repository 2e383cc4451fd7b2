"""Clean fixed-point forward (numba backend, PipeCNN's arithmetic) against the float forward of the same net,
same weights, same input, same run: ms/image and the ratio fixed / float (target <= 1.5).

Nets: LeNet (real weights, batch 64), cifar10_quick (real weights, batch 100), AlexNet = CaffeNet deploy (He-scaled
filler weights, PipeCNN's published AlexNet table, batch 10). Correctness first: every accelerated blob holds
exactly q 2^-F, and on one image the fast exact path equals the MAC-order register loop on every blob. Timing:
float and fixed forwards alternate; the ratio uses the best of --repeat runs of each (medians printed beside).
--layers adds a per-layer table (each layer's forward_from_to alone, best of --repeat, ms/image): where the time
goes. Compare versions with single-thread CPU time on a busy machine (OMP_NUM_THREADS=1, time.process_time).
Run: python scripts/bench/fixed_forward.py [--repeat N] [--nets lenet,cifar10_quick,alexnet] [--layers]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

import caffe_unstable as caffe  # noqa: E402
from caffe_unstable.io.prototxt import read_net_text  # noqa: E402
from caffe_unstable.net import accel_bridge  # noqa: E402

MODELS = SHARED / "models"
TABLES = ROOT / "models/quant"


def set_batch(param, batch):
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    if len(param.input_shape):
        param.input_shape[0].dim[0] = batch
    elif len(param.input_dim):
        param.input_dim[0] = batch
    return param


def nets():
    """(name, NetParameter, weights path or None, quant, batch, input scale)"""
    return {
        "lenet": (read_net_text(MODELS / "lenet_mnist/lenet.prototxt"),
                  MODELS / "lenet_mnist/lenet_iter_10000.caffemodel", str(TABLES / "lenet.quant.yaml"), 64,
                  ("uniform", 1.0)),
        "cifar10_quick": (read_net_text(MODELS / "cifar10_quick/cifar10_quick.prototxt"),
                          MODELS / "cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5",
                          str(TABLES / "cifar10_quick.quant.yaml"), 100, ("normal", 60.0)),
        "alexnet": (read_net_text(MODELS / "bvlc_reference_caffenet/deploy.prototxt"), None, "pipecnn:alexnet", 10,
                    ("normal", 50.0)),
    }


def build(param, weights, batch, accel=None):
    param = set_batch(param, batch)
    if weights is not None:
        return caffe.Net(param, caffe.TEST, weights=str(weights), accel=accel)
    net = caffe.Net(param, caffe.TEST, accel=accel, rng=0)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():        # deploy nets carry no fillers: He-scaled gaussians, as the float tests
        w = blobs[0]
        w.data[...] = rng.normal(0, np.sqrt(2.0 / (w.count // w.shape[0])), w.shape)
    return net


def share_weights(dst, src):
    for name, blobs in src.params.items():
        for a, b in zip(dst.params[name], blobs):
            a.data[...] = b.data


def check(name, fixed_net, acc, x):
    """Blob contract on the batch, then fast == MAC order on one image (0 differing values)."""
    fixed_net.blobs[fixed_net.inputs[0]].data[...] = x
    fixed_net.forward()
    for blob, f in accel_bridge.blob_fracs(fixed_net).items():
        q = fixed_net.blobs[blob].data.astype(np.float64) * 2.0 ** f
        assert np.array_equal(q, np.round(q)) and -128 <= q.min() and q.max() <= 127, (name, blob)
    one = {}
    inp = fixed_net.blobs[fixed_net.inputs[0]]
    inp.reshape(1, *x.shape[1:])
    inp.data[...] = x[:1]
    for path in ("fast", "mac"):
        acc.path = path
        fixed_net.forward()
        one[path] = {k: v.data.copy() for k, v in fixed_net.blobs.items()}
    acc.path = "auto"
    inp.reshape(*x.shape)
    bad = sum(int((one["fast"][k] != one["mac"][k]).sum()) for k in one["fast"])
    assert bad == 0, f"{name}: fast and MAC-order paths differ in {bad} values"
    return bad


def per_layer(nets, batch, repeat):
    """Each layer's forward alone (its bottoms as the last full forward left them), best of `repeat`, ms/image."""
    best = {}
    for key, net in nets:
        names = net._layer_names
        net.forward()
        for _ in range(repeat):
            for i, layer in enumerate(names):
                t = time.perf_counter()
                net.forward_from_to(i, i)
                ms = (time.perf_counter() - t) * 1000 / batch
                best[key, layer] = min(best.get((key, layer), ms), ms)
    rows = [(layer, best["float", layer], best["fixed", layer]) for layer in names]
    for layer, fl, fx in rows:
        print(f"    {layer:10s} float {fl:8.3f}  fixed {fx:8.3f}  (+{fx - fl:7.3f})")


def bench(name, repeat, layers=False):
    param, weights, quant, batch, (kind, scale) = nets()[name]
    rng = np.random.default_rng(1)
    float_net = build(param, weights, batch)
    acc = caffe.accel.open("numba", quant=quant)
    fixed_net = build(read_net_text_like(param), weights, batch, acc)
    share_weights(fixed_net, float_net)
    shape = float_net.blobs[float_net.inputs[0]].shape
    x = (rng.random(shape) * scale if kind == "uniform" else rng.normal(0, scale, shape)).astype(np.float32)
    mismatches = check(name, fixed_net, acc, x)
    float_net.blobs[float_net.inputs[0]].data[...] = x
    fixed_net.blobs[fixed_net.inputs[0]].data[...] = x
    float_net.forward()
    fixed_net.forward()
    times = {"float": [], "fixed": []}
    for _ in range(repeat):
        for key, net in (("float", float_net), ("fixed", fixed_net)):
            t = time.perf_counter()
            net.forward()
            times[key].append((time.perf_counter() - t) * 1000 / batch)
    # best of N (timeit's rule: the least disturbed run), median beside it; runs alternate float and fixed
    fl, fx = min(times["float"]), min(times["fixed"])
    ml, mx = statistics.median(times["float"]), statistics.median(times["fixed"])
    note = f"fast == MAC order on every blob of one image: {mismatches} mismatches"
    print(f"{name:14s} batch {batch:3d}  float {fl:8.3f} ms/image  fixed {fx:8.3f} ms/image  "
          f"fixed / float = {fx / fl:5.2f}  (medians {ml:.3f} / {mx:.3f} = {mx / ml:.2f})   [{note}]", flush=True)
    if layers:
        per_layer((("float", float_net), ("fixed", fixed_net)), batch, repeat)
    return fx / fl


def read_net_text_like(param):
    from caffe_unstable.proto import caffe_pb2

    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(param)
    return copy


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--nets", default="lenet,cifar10_quick,alexnet")
    ap.add_argument("--layers", action="store_true", help="also time each layer alone")
    args = ap.parse_args()
    ratios = [bench(name, args.repeat, args.layers) for name in args.nets.split(",")]
    print(f"worst fixed / float = {max(ratios):.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
