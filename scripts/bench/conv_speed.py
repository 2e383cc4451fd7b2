"""Convolution and InnerProduct layers of LeNet, cifar10_quick and AlexNet against PyTorch CPU: forward and
forward+backward time, same shapes, same run (pool_speed.py runs Pooling and LRN through the same harness).

Each case first checks our top and bottom/param gradients against PyTorch's, then times both.
Threads: OMP_NUM_THREADS (default 2) for both sides. Prints ours/peer ratios (< 1 means we are faster).
Run: python scripts/bench/conv_speed.py [--repeat N] [--cpu-time]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from caffe_unstable.net.blob import Blob  # noqa: E402
from caffe_unstable.ops import layer_class  # noqa: E402
from caffe_unstable.proto import caffe_pb2  # noqa: E402

CONV = 'type: "Convolution" convolution_param {{ num_output: {} kernel_size: {} {} }}'
# (label, bottom shape, LayerParameter text)
CASES = [
    ("lenet conv2", (64, 20, 12, 12), CONV.format(50, 5, "")),
    ("cifar conv1", (100, 3, 32, 32), CONV.format(32, 5, "pad: 2")),
    ("cifar conv2", (100, 32, 16, 16), CONV.format(32, 5, "pad: 2")),
    ("alex conv1", (10, 3, 227, 227), CONV.format(96, 11, "stride: 4")),
    ("alex conv2", (10, 96, 27, 27), CONV.format(256, 5, "pad: 2 group: 2")),
    ("alex conv3", (10, 256, 13, 13), CONV.format(384, 3, "pad: 1")),
    ("lenet ip1", (64, 50, 4, 4), 'type: "InnerProduct" inner_product_param { num_output: 500 }'),
    ("alex fc6", (10, 256, 6, 6), 'type: "InnerProduct" inner_product_param { num_output: 4096 }'),
]


def build(text, shape, rng):
    lp = caffe_pb2.LayerParameter(name="l", phase=caffe_pb2.TRAIN)
    text_format.Parse(text, lp)
    layer = layer_class(lp.type)(lp, rng)
    bottom, top = [Blob(shape)], [Blob()]
    bottom[0].data[...] = rng.normal(size=shape)
    layer.setup(bottom, top)
    for p in layer.blobs:
        p.data[...] = rng.normal(0, 0.1, p.shape)
    return layer, bottom, top


def torch_op(layer, torch):
    """A function of the bottom tensor (and the parameter tensors) computing the same top in PyTorch."""
    F, p = torch.nn.functional, layer.param
    params = [torch.tensor(b.data.copy(), requires_grad=True) for b in layer.blobs]
    if p.type == "Convolution":
        cp = p.convolution_param
        return params, lambda x: F.conv2d(x, params[0], params[1], stride=cp.stride[0] if cp.stride else 1,
                                          padding=cp.pad[0] if cp.pad else 0, groups=cp.group)
    if p.type == "Pooling":
        pp = p.pooling_param
        fn = F.max_pool2d if pp.pool == pp.MAX else F.avg_pool2d
        return params, lambda x: fn(x, pp.kernel_size, pp.stride, pp.pad, ceil_mode=True)
    if p.type == "LRN":
        lp = p.lrn_param
        return params, lambda x: F.local_response_norm(x, lp.local_size, lp.alpha, lp.beta, lp.k)
    return params, lambda x: F.linear(x.flatten(1), params[0], params[1])


def timed(fn, repeat, clock):
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1000)
    return statistics.median(times)


def main(cases=CASES, doc=__doc__):
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = ap.parse_args()
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    rng = np.random.default_rng(0)
    print(f"{'layer':<12} {'fwd ours':>9} {'fwd torch':>9} {'ratio':>6} {'f+b ours':>9} {'f+b torch':>9} {'ratio':>6}")
    for label, shape, text in cases:
        layer, bottom, top = build(text, shape, rng)
        params, op = torch_op(layer, torch)
        x = torch.tensor(bottom[0].data.copy(), requires_grad=True)
        dy = rng.normal(size=top[0].shape).astype(np.float32)

        def ours_fwd():
            layer.reshape(bottom, top)
            layer.forward(bottom, top)

        def ours_fb():
            ours_fwd()
            top[0].diff[...] = dy
            for b in layer.blobs:
                b.diff[...] = 0
            layer.backward(top, [True], bottom)

        def torch_fwd():
            with torch.no_grad():
                op(x)

        def torch_fb():
            x.grad = None
            for q in params:
                q.grad = None
            op(x).backward(torch.from_numpy(dy))

        ours_fb()
        torch_fb()
        checks = [(top[0].data, op(x).detach().numpy()), (bottom[0].diff, x.grad.numpy())]
        checks += [(b.diff, q.grad.numpy()) for b, q in zip(layer.blobs, params)]
        for i, (ours, theirs) in enumerate(checks):
            err = float(np.abs(ours - theirs).max()) / max(1.0, float(np.abs(theirs).max()))
            assert err < 1e-4, f"{label}: array {i} differs from PyTorch (max error {err:.2e} of the largest value)"
        f_o, f_t = timed(ours_fwd, args.repeat, clock), timed(torch_fwd, args.repeat, clock)
        fb_o, fb_t = timed(ours_fb, args.repeat, clock), timed(torch_fb, args.repeat, clock)
        print(f"{label:<12} {f_o:>8.2f}m {f_t:>8.2f}m {f_o / f_t:>6.2f} "
              f"{fb_o:>8.2f}m {fb_t:>8.2f}m {fb_o / fb_t:>6.2f}")
    print(f"ratio = ours / PyTorch CPU ({threads} thread(s)), median {'CPU' if args.cpu_time else 'wall'} ms")


if __name__ == "__main__":
    main()
