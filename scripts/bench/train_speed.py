"""LeNet training speed on Fashion-MNIST: caffe_unstable's SGD solver against PyTorch CPU (2 threads), same run.

Caffe's lenet_solver (SGD, lr 0.01 with the inv policy, momentum 0.9, weight decay 5e-4, batch 64) on
models/lenet_fmnist/lenet_train_test.prototxt. Ours reads its batches from the LMDB through the Data layer, as
`cu-train` does; the PyTorch peer gets the same batches from memory (a generous peer) and starts from our filler
weights. The first iterations' losses are checked to agree before anything is timed. Prints iterations/s of
both and ours/peer (> 1 means we are faster). Targets: >= 70 it/s and a ratio >= 1.0.
Run: python scripts/bench/train_speed.py [--iters N] [--rounds R] [--lmdb PATH]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from caffe_unstable.io.prototxt import read_net_text, read_solver_text  # noqa: E402
from caffe_unstable.log import NullLogger  # noqa: E402

SOLVER = ROOT / "models/lenet_fmnist/lenet_solver.prototxt"
NET = ROOT / "models/lenet_fmnist/lenet_train_test.prototxt"
DEMO_LMDB = ROOT / "demo_out/fmnist_train_lmdb"
CHECK_ITERS = 5


def train_lmdb(given, scratch):
    """An LMDB of the 60,000 Fashion-MNIST training images: --lmdb, make demo's, or one built now."""
    if given:
        return Path(given)
    if (DEMO_LMDB / "data.mdb").is_file():
        return DEMO_LMDB
    from caffe_unstable.cli.data import convert_mnist

    fmnist = Path("/usr/share/datasets/fashion-mnist")
    out = Path(scratch) / "fmnist_train_lmdb"
    convert_mnist(fmnist / "train-images-idx3-ubyte.gz", fmnist / "train-labels-idx1-ubyte.gz", out, NullLogger())
    return out


def our_solver(lmdb_path):
    """The lenet solver with the net inlined, its train source pointed at `lmdb_path`, and nothing but training:
    no test nets, display, or snapshots."""
    from caffe_unstable.solvers import get_solver

    param = read_solver_text(str(SOLVER))
    net = read_net_text(str(NET))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(lmdb_path)
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.ClearField("test_iter")
    param.test_interval = 0
    param.display = 0
    param.snapshot = 0
    param.snapshot_after_train = False
    return get_solver(param, log=NullLogger(), source=str(SOLVER)), param


def batches(lmdb_path, batch, count):
    """The first count batches in key order (the Data layer's order), scaled as transform_param scale."""
    from caffe_unstable.data.sources import LMDBReader, raw_datums_to_batch

    reader = LMDBReader(str(lmdb_path))
    out = []
    for _ in range(count):
        keys, values = reader.read(batch)
        x, labels, _ = raw_datums_to_batch(values, keys, None)
        out.append((x.astype(np.float32) * np.float32(0.00390625), labels.astype(np.int64)))
    reader.close()
    return out


class TorchLeNet:
    """Caffe's LeNet (conv 20, pool, conv 50, pool, ip 500, relu, ip 10) and SGD in PyTorch, from our weights."""

    def __init__(self, torch, params, solver_param):
        self.torch = torch
        t = {name: [torch.tensor(b.data.copy(), requires_grad=True) for b in blobs] for name, blobs in params.items()}
        self.w = t
        weights = [t[n][0] for n in ("conv1", "conv2", "ip1", "ip2")]
        biases = [t[n][1] for n in ("conv1", "conv2", "ip1", "ip2")]
        p = solver_param
        self.param = p
        # lr_mult 1 for weights, 2 for biases; decay_mult 1 (lenet_train_test.prototxt)
        self.opt = torch.optim.SGD([{"params": weights, "mult": 1.0}, {"params": biases, "mult": 2.0}],
                                   lr=p.base_lr, momentum=p.momentum, weight_decay=p.weight_decay, foreach=True)
        self.iter = 0

    def step(self, x, labels):
        F, w = self.torch.nn.functional, self.w
        p = self.param
        rate = p.base_lr * (1 + p.gamma * self.iter) ** -p.power          # lr_policy "inv"
        for group in self.opt.param_groups:
            group["lr"] = rate * group["mult"]
        y = F.max_pool2d(F.conv2d(x, *w["conv1"]), 2, 2)
        y = F.max_pool2d(F.conv2d(y, *w["conv2"]), 2, 2)
        y = F.linear(F.relu(F.linear(y.flatten(1), *w["ip1"])), *w["ip2"])
        loss = F.cross_entropy(y, labels)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()
        self.opt.step()
        self.iter += 1
        return loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="timed iterations of each (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--lmdb", default=None, help="the Fashion-MNIST train LMDB (default: make demo's)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        lmdb_path = train_lmdb(args.lmdb, scratch)
        solver, param = our_solver(lmdb_path)
        batch = solver.net.blobs["data"].shape[0]
        peer = TorchLeNet(torch, solver.net.params, param)
        data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches(lmdb_path, batch, 60000 // batch)]

        # validate: the same first losses from the same weights and batches
        ours, theirs = [], []
        for i in range(CHECK_ITERS):
            solver.step(1)
            ours.append(float(solver.net.blobs["loss"].data))
            theirs.append(peer.step(*data[i]))
        worst = max(abs(a - b) for a, b in zip(ours, theirs))
        print("first losses, ours:  " + " ".join(f"{v:.6f}" for v in ours))
        print("first losses, torch: " + " ".join(f"{v:.6f}" for v in theirs))
        if worst > 1e-4:
            raise SystemExit(f"the losses disagree (max |diff| {worst:.3g}): not timing a different computation")

        # alternate rounds, so that a busy machine slows both alike; report each side's best round
        per_round = max(1, args.iters // args.rounds)
        ours_rates, torch_rates = [], []
        for r in range(args.rounds):
            start = time.perf_counter()
            solver.step(per_round)
            ours_rates.append(per_round / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(per_round):
                peer.step(*data[peer.iter % len(data)])
            torch_rates.append(per_round / (time.perf_counter() - start))
    ours_rate, torch_rate = max(ours_rates), max(torch_rates)
    ratios = sorted(a / b for a, b in zip(ours_rates, torch_rates))
    print(f"LeNet SGD, batch {batch}, {args.rounds} rounds of {per_round} iterations: caffe_unstable "
          f"{ours_rate:.1f} it/s, PyTorch CPU (2 threads) {torch_rate:.1f} it/s (best rounds); ours/peer = "
          f"{ours_rate / torch_rate:.2f} (median round {ratios[len(ratios) // 2]:.2f}); targets >= 70 it/s, >= 1.0")


if __name__ == "__main__":
    main()
