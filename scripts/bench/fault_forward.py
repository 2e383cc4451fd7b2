"""Cost of a faulty forward on the numba backend (faults.md §13 item 7): the conv/FC layers of a net, clean against
soft errors and against overclocking, same layers, same inputs, same run.

  soft  MAC flips at 10^-4.5 per MAC, site accumulator, hardware count (fast GEMM path + §4.4 corrections);
        target <= 1.2x the clean fixed-point forward of the same layers, plan sampling included
  soft_product  the same at site product (the shipped device profiles' soft_errors.site: a flip's correction
        needs one step's dot product, not a chain prefix)
  ch    carry horizon at 260 MHz with the shipped profile pipecnn_kcu1500 (per-add jitter; the register loop for
        every lane), target <= 4x, plan sampling included

Nets: CaffeNet deploy (He-scaled filler weights, PipeCNN's published AlexNet table, batch 10), LeNet (real weights,
batch 64) and cifar10_quick (real weights, batch 100). Each accelerated layer is driven directly through the
backend (float_to_fixed -> data_layout_reorder -> data_to_fpga -> launch_accelerator) on the int8 image of its
float bottom blob; one repetition runs the clean, soft and ch forwards of every layer in turn, and the medians of
--repeat repetitions are compared. The machine may be shared: the medians of interleaved runs are the fair
comparison, and the printed `ratio` lines are what the targets apply to.
Run: python scripts/bench/fault_forward.py [--repeat N] [--nets caffenet,lenet,cifar10_quick]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import caffe_unstable as caffe  # noqa: E402
from caffe_unstable.accel import load_quant  # noqa: E402
from caffe_unstable.accel.faults import (DeviceProfile, MacFlip, PassKey, geometry_from, models_for,  # noqa: E402
                                         sample_plan)
from caffe_unstable.accel.geometry import ConvStage  # noqa: E402
from caffe_unstable.accel.interface import Launch  # noqa: E402
from caffe_unstable.net import accel_bridge  # noqa: E402
from fixed_forward import build, nets  # noqa: E402

RATE = 10 ** -4.5
FREQ_MHZ = 260.0
PROFILE = "pipecnn_kcu1500"
ACCEL_TYPES = ("Convolution", "InnerProduct")


def accel_layers(net, quant, hw):
    """[(layer_index, name, geometry, format, relu, float bottom)] of the conv/FC layers the accelerator runs."""
    out = []
    bottoms, tops = net.bottom_names, net.top_names
    for i, layer in enumerate(net.layers):
        if layer.type not in ACCEL_TYPES or layer.name not in quant:
            continue
        bottom = net.blobs[bottoms[layer.name][0]].data
        top = tops[layer.name][0]
        relu = any(lyr.type == "ReLU" and bottoms[lyr.name][0] == top for lyr in net.layers)
        geom = accel_bridge.conv_geometry(layer, bottom.shape, hw)
        out.append((i, layer.name, geom, quant[layer.name], relu, bottom.copy(), layer))
    return out


class Harness:
    """The layers' device buffers on one backend, and one timed forward of all of them."""

    def __init__(self, acc, layers):
        self.be, self.hw = acc.backend, acc.hw
        self.layers = []
        widths = (self.hw.width_product, self.hw.width_accumulator, self.hw.width_final)
        for index, name, geom, fmt, relu, bottom, layer in layers:
            be = self.be
            w, b = layer.blobs[0].data, layer.blobs[1].data if len(layer.blobs) > 1 else None
            wq = be.float_to_fixed(w.reshape(geom.O, geom.Cg, geom.Kh, geom.Kw), fmt.frac_w, fmt.w_bits)
            buffers = {"weights": be.data_layout_reorder(wq, "weights", geom)}
            if b is not None:
                buffers["bias"] = be.data_layout_reorder(be.float_to_fixed(b, fmt.frac_w, fmt.w_bits), "bias", geom)
            be.data_to_fpga(name, **buffers)
            x = bottom.reshape(geom.N, geom.C, geom.H, geom.W)
            xdev = be.data_layout_reorder(be.float_to_fixed(x, fmt.frac_din), "input", geom)
            self.layers.append((index, name, geom, ConvStage(geom, fmt, relu, b is not None), xdev,
                                geometry_from(geom, widths)))

    def forward(self, models=None, key=None):
        """One forward of every layer (plan sampled first when `models`); -> (seconds, per-layer stats)."""
        t0 = time.perf_counter()
        plan = None
        if models:
            batch = self.layers[0][2].N
            plan = sample_plan(models, [(i, name, gd) for i, name, _, _, _, gd in self.layers], batch, key)
        stats = {}
        for index, name, geom, stage, xdev, _ in self.layers:
            self.be.data_to_fpga(name, input=xdev)
            lp = plan.layer(index) if plan is not None else None
            launch = self.be.launch_accelerator(Launch(name, conv=stage, plan=lp))
            stats[name] = launch.stats
        return time.perf_counter() - t0, stats


def bench(name, repeat):
    param, weights, quant, batch, (kind, scale) = nets()[name if name != "caffenet" else "alexnet"]
    rng = np.random.default_rng(1)
    float_net = build(param, weights, batch)
    shape = float_net.blobs[float_net.inputs[0]].shape
    x = (rng.random(shape) * scale if kind == "uniform" else rng.normal(0, scale, shape)).astype(np.float32)
    float_net.blobs[float_net.inputs[0]].data[...] = x
    float_net.forward()
    # the shipped profiles' register widths (an 18-bit product, pipecnn.md §1.2); the clean forward and the
    # accumulator-site and carry-horizon runs do not depend on the product's width
    acc = caffe.accel.open("numba", quant=quant, width_product=18)
    layers = accel_layers(float_net, load_quant(quant), acc.hw)
    h = Harness(acc, layers)
    profile = DeviceProfile.load(PROFILE)
    runs = {"clean": (None, None), "soft": ([MacFlip(RATE, "accumulator")], 1),
            "soft_product": ([MacFlip(RATE, "product")], 1), "ch": (models_for(profile, freq_mhz=FREQ_MHZ), 2)}
    times = {k: [] for k in runs}
    last = {}
    for mode, (models, _) in runs.items():            # warm-up: compile, caches
        h.forward(models, PassKey(7, 1, 0, 0))
    for rep in range(repeat):
        for mode, (models, phase) in runs.items():
            dt, last[mode] = h.forward(models, PassKey(7, phase or 1, 0, rep + 1))
            times[mode].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    soft = {k: sum(s.get(k) or 0 for s in last["soft"].values()) for k in ("mac_flips", "outputs_changed")}
    ch = {k: sum(s.get(k) or 0 for s in last["ch"].values()) for k in ("late_adds", "outputs_hit", "outputs_changed")}
    print(f"{name:14s} batch {batch:3d}  clean {med['clean'] * 1e3:9.1f} ms  soft {med['soft'] * 1e3:9.1f} ms  "
          f"ch {med['ch'] * 1e3:9.1f} ms   (medians of {repeat}; soft: {soft['mac_flips']} flips, "
          f"{soft['outputs_changed']} outputs changed; ch: {ch['late_adds']} late adds, {ch['outputs_hit']} outputs "
          f"hit, {ch['outputs_changed']} changed)", flush=True)
    print(f"ratio {name} soft/clean = {med['soft'] / med['clean']:.2f} (target <= 1.2)")
    print(f"ratio {name} soft_product/clean = {med['soft_product'] / med['clean']:.2f} (the shipped profiles' "
          f"site, 18-bit m_t; target <= 1.2)")
    print(f"ratio {name} ch/clean = {med['ch'] / med['clean']:.2f} (target <= 4)", flush=True)
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--nets", default="caffenet,lenet,cifar10_quick")
    args = ap.parse_args()
    for name in args.nets.split(","):
        bench(name, args.repeat)


if __name__ == "__main__":
    main()
