"""Net forward and forward+backward time: caffe_unstable against PyTorch CPU (2 threads), same net, same run.

Nets: LeNet (batch 64), cifar10_quick (batch 100), AlexNet (batch 10), TRAIN phase with a SoftmaxWithLoss.
The PyTorch peer is built layer by layer from the same NetParameter with our weights copied in, and the losses
are checked to agree before anything is timed. Prints ours/peer ratios (< 1 means we are faster).
Threads: OMP_NUM_THREADS (default 2) for both sides; set it before the run so OpenBLAS and numba's pools agree.
On a shared machine, `OMP_NUM_THREADS=1 ... --cpu-time` compares single-thread CPU time, which other processes
barely disturb (wall time with 2 threads suffers badly from spinning BLAS threads being descheduled; running with
OPENBLAS_THREAD_TIMEOUT=4 in the environment makes OpenBLAS's idle threads sleep at once and ours far less
sensitive to other load). The load average is printed before and after the run.
Run: python scripts/bench/net_speed.py [--repeat N] [--cpu-time] [--nets LeNet,AlexNet]
"""
import argparse
import os
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
from caffe_unstable.proto import caffe_pb2  # noqa: E402


def with_loss(deploy_path, batch):
    """A deploy net turned into a training net: batch-sized Input + label, last Softmax -> SoftmaxWithLoss."""
    net = read_net_text(deploy_path)
    data = net.layer[0]
    data.input_param.shape[0].dim[0] = batch
    label = caffe_pb2.LayerParameter(name="label", type="Input", top=["label"])
    label.input_param.shape.add().dim.append(batch)
    layers = [data, label] + [layer for layer in net.layer[1:]]
    last = layers[-1]
    if last.type == "Softmax":
        last.type = "SoftmaxWithLoss"
        last.bottom.append("label")
    out = caffe_pb2.NetParameter(name=net.name)
    out.layer.extend(layers)
    return out


def benchmark_nets():
    return [
        ("LeNet", 64, read_net_text(SHARED / "golden/nets/lenet/lenet.prototxt"), True),
        ("cifar10_quick", 100, read_net_text(SHARED / "golden/nets/cifar10_quick/cifar10_quick.prototxt"), True),
        ("AlexNet", 10, with_loss(SHARED / "models/bvlc_alexnet/deploy.prototxt", 10), False),
    ]


def set_batch(param, batch):
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch


class TorchPeer:
    """The same net in PyTorch, run op by op over the blob names of the NetParameter."""

    def __init__(self, net, torch):
        self.torch, self.net = torch, net
        self.params = {}
        for name, blobs in net.params.items():
            self.params[name] = [torch.tensor(b.data.copy(), requires_grad=True) for b in blobs]

    def forward(self, inputs):
        torch, F = self.torch, self.torch.nn.functional
        blobs = dict(inputs)
        loss = None
        for name, layer in zip(self.net._layer_names, self.net.layers):
            p = layer.param
            bottoms = [blobs[b] for b in self.net.bottom_names[name]]
            tops = self.net.top_names[name]
            t = layer.type
            if t == "Input":
                continue
            if t == "Convolution":
                cp = p.convolution_param
                w = self.params[name]
                y = F.conv2d(bottoms[0], w[0], w[1] if len(w) > 1 else None, stride=cp.stride[0] if cp.stride else 1,
                             padding=cp.pad[0] if cp.pad else 0, groups=cp.group)
            elif t == "InnerProduct":
                w = self.params[name]
                y = F.linear(bottoms[0].flatten(1), w[0], w[1] if len(w) > 1 else None)
            elif t == "ReLU":
                y = F.relu(bottoms[0])
            elif t == "Pooling":
                pp = p.pooling_param
                fn = F.max_pool2d if pp.pool == pp.MAX else F.avg_pool2d
                y = fn(bottoms[0], pp.kernel_size, pp.stride, pp.pad, ceil_mode=True)
            elif t == "LRN":
                lp = p.lrn_param
                y = F.local_response_norm(bottoms[0], lp.local_size, lp.alpha, lp.beta, lp.k)
            elif t == "Dropout":
                y = F.dropout(bottoms[0], p.dropout_param.dropout_ratio, training=True)
            elif t == "Split":
                for top in tops:
                    blobs[top] = bottoms[0]
                continue
            elif t == "SoftmaxWithLoss":
                y = F.cross_entropy(bottoms[0].flatten(1), bottoms[1].long())
                loss = y
            elif t == "Accuracy":
                continue
            else:
                raise SystemExit(f"bench: no PyTorch peer for layer type {t}")
            blobs[tops[0]] = y
        return loss


def timed(fn, repeat, clock=time.perf_counter):
    fn()
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append((clock() - t0) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--nets", default="", help="comma-separated subset of LeNet,cifar10_quick,AlexNet")
    args = ap.parse_args()
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    rng = np.random.default_rng(0)
    print("load average %.2f %.2f %.2f" % os.getloadavg())
    print(f"{'net':<14} {'batch':>5} {'fwd ours':>9} {'fwd torch':>9} {'ratio':>6} {'f+b ours':>9} "
          f"{'f+b torch':>9} {'ratio':>6}")
    for name, batch, param, scaled in benchmark_nets():
        if args.nets and name not in args.nets.split(","):
            continue
        set_batch(param, batch)
        net = caffe.Net(param, caffe.TRAIN, rng=0)
        for blobs in net.params.values():   # He-scaled gaussians keep the activations in range
            w = blobs[0]
            fan_in = w.count // w.shape[0]
            w.data[...] = rng.normal(0, np.sqrt(2.0 / fan_in), w.shape)
        x = rng.normal(0, 1, net.blobs["data"].shape).astype(np.float32)
        labels = rng.integers(0, net.blobs[net.bottom_names[net._layer_names[-1]][0]].shape[1], batch)
        net.blobs["data"].data[...] = x
        net.blobs["label"].data[...] = labels
        peer = TorchPeer(net, torch)
        inputs = {"data": torch.tensor(x), "label": torch.tensor(labels.astype(np.float32))}
        if "Dropout" not in [layer.type for layer in net.layers]:
            ours = net.forward_prefilled()
            theirs = float(peer.forward(inputs))
            assert abs(ours - theirs) <= 1e-3 * max(1.0, abs(theirs)), f"{name}: loss {ours} vs PyTorch {theirs}"

        def torch_fwd():
            with torch.no_grad():
                peer.forward(inputs)

        def torch_fb():
            for ps in peer.params.values():
                for q in ps:
                    q.grad = None
            peer.forward(inputs).backward()

        def ours_fb():
            net.clear_param_diffs()
            net.forward_backward()

        repeat = args.repeat if batch < 50 or name != "AlexNet" else max(3, args.repeat // 2)
        f_ours, f_torch = timed(net.forward_prefilled, repeat, clock), timed(torch_fwd, repeat, clock)
        fb_ours, fb_torch = timed(ours_fb, repeat, clock), timed(torch_fb, repeat, clock)
        print(f"{name:<14} {batch:>5} {f_ours:>8.1f}m {f_torch:>8.1f}m {f_ours / f_torch:>6.2f} "
              f"{fb_ours:>8.1f}m {fb_torch:>8.1f}m {fb_ours / fb_torch:>6.2f}")
    print("load average %.2f %.2f %.2f" % os.getloadavg())
    print(f"ratio = ours / PyTorch CPU ({threads} thread(s)), median {'CPU' if args.cpu_time else 'wall'} ms; "
          "targets (2 threads): <= 1.0 LeNet, cifar10_quick; <= 0.65 AlexNet")


if __name__ == "__main__":
    main()
