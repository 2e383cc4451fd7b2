"""Canaries on a net (faults.md §9): `cu-characterize canaries` makes a set from a model's TEST data, and
`cu-test --canaries` checks one between its batches. canaries.py keeps the set file and the grading; this module
runs nets.

The canaries go through a second net, the model's TEST net with its data layers replaced by Input layers of the
canary batch shape (net/deploy.py), sharing the accelerator of the run: it runs from the first layer to the last
accelerated one, whose int8 output is compared with the reference. The stored inputs are the int8 values the
first accelerated layer receives, so a check decodes no images and does not touch the data source.
"""
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import CaffeUnstableError

CHECK_PHASE = 255          # the key of a canary check: (255, 0, check index) (faults.md §3.1)


@dataclass
class Ends:
    """Where the accelerator's work on a net begins and ends."""
    input_blob: str        # the data-layer top the first accelerated layer reads (through Splits)
    input_frac: int        # the F it is quantised with (that layer's frac_din)
    output_layer: int      # index of the last accelerated layer
    output_blob: str       # its top, holding q 2^-output_frac after that layer's forward
    output_frac: int


def accel_ends(net):
    """The Ends of a net on its accelerator; one-line errors where a canary cannot be defined."""
    from ..net import accel_bridge

    p = accel_bridge.plan(net)
    if not p.kinds:
        raise CaffeUnstableError(net._source, "canaries need a net with layers on the accelerator")
    producer = {}
    for i, tids in enumerate(net._top_ids):
        for t in tids:
            producer.setdefault(t, i)
    data_tops = {t for i, tids in enumerate(net._top_ids) if not net._bottom_ids[i] for t in tids}

    def origin(b):          # through Caffe's automatic Splits back to the blob they copy
        while net.layers[producer[b]].type == "Split":
            b = net._bottom_ids[producer[b]][0]
        return b

    first = next((i for i in sorted(p.kinds) if p.kinds[i] in ("conv", "pool", "lrn")
                  and origin(net._bottom_ids[i][0]) in data_tops), None)
    if first is None:
        raise CaffeUnstableError(net._source, "canaries need an accelerated layer that reads the network input "
                                              "(a data layer's top) directly")
    input_frac = p.formats[first].frac_din if p.kinds[first] == "conv" else p.frac_in[first]
    last = max(p.kinds)
    out = net._top_ids[last][0]
    kind = p.kinds[last]
    if kind == "conv":
        output_frac = p.formats[last].frac_dout
    elif kind == "pool":
        output_frac = p.frac_in[last]
    elif kind == "lrn":
        output_frac = 0
    else:                   # a ReLU keeps its input's F, which is the blob's F unless a later layer rewrites it
        if any(out in net._top_ids[j] for j in range(last + 1, len(net.layers))):
            raise CaffeUnstableError(net._source, f"the output of layer '{net._layer_names[last]}' is rewritten "
                                                  f"in place later; canaries cannot read it")
        output_frac = p.blob_frac[out]
    return Ends(net._blob_names[origin(net._bottom_ids[first][0])], int(input_frac), last, net._blob_names[out],
                int(output_frac))


def scores_and_labels(net):
    """(scores blob id, labels blob id) from the net's first Accuracy layer, else (None, blob 'label' or None)."""
    for i, layer in enumerate(net.layers):
        if layer.type == "Accuracy":
            return net._bottom_ids[i][0], net._bottom_ids[i][1]
    return None, (net._blob_names.index("label") if "label" in net._blob_names else None)


class CanaryNet:
    """The model's TEST net with Input layers of batch `n`, on accelerator `acc`; `run(inputs, key)` -> int8
    [n, K], the last accelerated layer's output for int8 canary inputs under the fault plan of `key`."""

    def __init__(self, model, weights, acc, like, n, level=0, stages=("",)):
        from ..io.prototxt import read_net_text
        from ..log import NullLogger
        from ..net import graph
        from ..net.deploy import data_layers_to_inputs
        from ..net.net import TEST, Net

        param = read_net_text(model)
        param.state.phase, param.state.level = TEST, int(level)
        param.state.ClearField("stage")
        param.state.stage.extend(s for s in stages if s)
        filtered = graph.filter_net(param, str(model))
        shapes = {like._blob_names[t]: [int(n)] + list(like._blob_list[t].shape[1:])
                  for i, tids in enumerate(like._top_ids) if not like._bottom_ids[i] for t in tids}
        self.net = Net(data_layers_to_inputs(filtered, shapes), TEST, level=level, stages=list(stages),
                       weights=weights, accel=acc, log=NullLogger(), source=model)
        self.ends = accel_ends(self.net)
        shape = self.net.blobs[self.ends.output_blob].shape
        self.classes = int(shape[1]) if len(shape) > 1 else 1   # channels of the output (a map when spatial)

    def run(self, inputs, key):
        from ..accel.quant import fixed_to_float, float_to_fixed

        e = self.ends
        net = self.net
        net.blobs[e.input_blob].data[...] = fixed_to_float(inputs, e.input_frac)
        net.fault_key = key
        net.forward_from_to(0, e.output_layer)
        out = net.blobs[e.output_blob].data
        return float_to_fixed(out.reshape(len(out), -1), e.output_frac)      # exact: the blob holds q 2^-F


# -- making a set ------------------------------------------------------------------------------------------------
def candidates(net, iterations):
    """Run `iterations` batches of the net's TEST data: (int8 inputs [N, C, H, W], scores [N, K] float64, labels
    [N] int32 (−1 unknown)). Scores are the Accuracy layer's (else the last accelerated layer's output)."""
    from ..accel.quant import float_to_fixed

    ends = accel_ends(net)
    scores_id, labels_id = scores_and_labels(net)
    inputs, scores, labels = [], [], []
    for _ in range(iterations):
        net.forward_prefilled()
        x = net.blobs[ends.input_blob].data
        inputs.append(float_to_fixed(x, ends.input_frac))
        s = net._blob_list[scores_id].data if scores_id is not None else net.blobs[ends.output_blob].data
        scores.append(s.reshape(len(x), -1).astype(np.float64))
        labels.append(net._blob_list[labels_id].data.reshape(-1).astype(np.int32) if labels_id is not None
                      else np.full(len(x), -1, np.int32))
    return np.concatenate(inputs), np.concatenate(scores), np.concatenate(labels)


def select(scores, labels, count):
    """Indices of `count` sensitive canaries (faults.md §9): clean top-1 correct first, then the smallest top-1/
    top-2 margin; a tie at the top (margin 0) comes after every positive margin, because any fault at all
    would flip it and the canary would only say that some fault happened."""
    n = len(scores)
    if count > n:
        raise CaffeUnstableError("--count", f"{count} canaries asked for, but the TEST data gave {n} images "
                                            f"(raise --iterations)")
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(n)
    top1 = order[:, 0]
    margin = scores[rows, top1] - scores[rows, order[:, 1]] if scores.shape[1] > 1 else np.full(n, np.inf)
    correct = (labels >= 0) & (top1 == labels)
    return np.lexsort((rows, margin, margin <= 0, ~correct))[:count], correct, margin


def expectation(canary, inputs, ref, degraded_min, checks, point):
    """The expected check at an operating point (faults.md §9 `expected`): `checks` simulated checks with the
    keys of checks 0, 1, ... of a run; fractions are their means, the level the highest one seen (a run's check
    drifts only above it)."""
    from ..accel.faults.canaries import check, top5

    k = canary.classes
    results = [check(canary.run(inputs, (CHECK_PHASE, 0, c)), ref, top5(ref, k), degraded_min, k)
               for c in range(checks)]
    n = len(inputs)
    entry = dict(point)
    entry.update({k: round(float(np.mean([r[k] for r in results])) / n, 6) for k in ("exact", "top1", "top5")})
    entry.update(level=max(r["level"] for r in results), checks=checks)
    return entry


# -- checking a set during cu-test --------------------------------------------------------------------------------
class CanaryChecker:
    """cu-test's hook: `check(after_batch)` runs the set once (key (255, 0, check index)), logs its line and
    keeps the result; `due(done, total)` says whether a check follows batch `done` (1-based) of `total`."""

    def __init__(self, spec, model, weights, net, every, level, stages, log):
        from pathlib import Path

        from ..accel.faults.canaries import CanarySet, model_sha256, quant_sha256

        acc = net.accel
        if acc is None or not hasattr(acc, "begin_pass"):
            raise CaffeUnstableError("--canaries", "canary checks run on the accelerator (--accel numba with "
                                                   "--quant, or --freq/--ser/--profile)")
        path, degraded_min = spec, None
        if spec == "profile":
            prof = acc.profile
            if prof is None or prof.canaries is None:
                shown = "no profile" if prof is None else f"profile {prof.name} has no canaries.set"
                raise CaffeUnstableError("--canaries profile", f"{shown} (give --profile P with a canaries: "
                                                               f"{{set: ...}} entry, or a *.canaries.npz path)")
            path, degraded_min = prof.resolve(prof.canaries["set"]), prof.canaries["degraded_min"]
        if Path(path).is_dir():
            self.set = set_from_folder(path, model, weights, acc, net, level, stages)
            log.info(f"Canary set from {path}: {len(self.set.inputs)} images, references from the clean numba "
                     f"accelerator", "faults.cpp:7")
        elif not Path(path).is_file():
            raise CaffeUnstableError(str(path), "canary set not found")
        else:
            sha = model_sha256(Path(model).read_bytes(), Path(weights).read_bytes())
            self.set = CanarySet.load(path, model_sha=sha)
        quant = quant_sha256(acc.quant.layers) if acc.quant is not None else None
        if self.set.meta.get("quant_sha256") not in (None, quant):
            print(f"warning: {path}: the canary set was made with another quantization table (sha256 "
                  f"{self.set.meta['quant_sha256'][:12]}…); its references may not match this run", file=sys.stderr)
        self.degraded_min = degraded_min if degraded_min is not None else self.set.meta.get("degraded_min", 0.9)
        self.canary = CanaryNet(model, weights, acc, net, len(self.set.inputs), level, stages)
        want = tuple(self.canary.net.blobs[self.canary.ends.input_blob].shape)
        if tuple(self.set.inputs.shape) != want:
            raise CaffeUnstableError(str(path), f"canary inputs have shape {list(self.set.inputs.shape)}, the net's "
                                                f"input '{self.canary.ends.input_blob}' takes {list(want)}")
        self.expected = self.set.expected_for(freq_mhz=acc.freq_mhz, ser=acc.ser)
        self.every, self.log, self.results = int(every), log, []

    def due(self, done, total):
        return done == total or (self.every > 0 and done % self.every == 0)

    def check(self, after_batch):
        from ..accel.faults.canaries import check, check_line, drifted

        i = len(self.results)
        out = self.canary.run(self.set.inputs, (CHECK_PHASE, 0, i))
        if out.shape != self.set.ref_output.shape:
            raise CaffeUnstableError("--canaries", f"the net's output {list(out.shape)} does not match the set's "
                                                   f"references {list(self.set.ref_output.shape)}")
        r = check(out, self.set.ref_output, self.set.ref_top5, self.degraded_min, self.set.meta.get("classes"))
        self.log.info(check_line(i, after_batch, r, self.expected), "faults.cpp:7")
        self.results.append({"check": i, "after_batch": after_batch, **r,
                             "expected": None if self.expected is None else self.expected["level"],
                             "drift": bool(drifted(r, self.expected))})

    @property
    def drifts(self):
        return sum(r["drift"] for r in self.results)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")


def set_from_folder(folder, model, weights, acc, like, level=0, stages=("",)):
    """A canary set without expectations from every image of `folder` (sorted by name; faults.md §9): decoded
    through the model's TEST data layer (an ImageData layer with its transform_param; one channel when the run's
    net `like` takes one), references from a clean numba accelerator of the run's build and table. Labels are
    unknown."""
    import tempfile
    from pathlib import Path

    from ..accel import open as open_accel
    from ..accel.faults.canaries import FORMAT, CanarySet, quant_sha256, top5
    from ..io.prototxt import read_net_text
    from ..log import NullLogger
    from ..net.deploy import data_layers_to_image_list
    from ..net.net import TEST, Net

    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise CaffeUnstableError(str(folder), f"no images in the canary folder (looked for "
                                              f"{', '.join(IMAGE_SUFFIXES)})")
    clean = open_accel("numba", quant=None, **{k: getattr(acc.hw, k) for k in acc.hw.keys()})
    clean.quant = acc.quant
    param = read_net_text(model)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "canaries.txt"
        listing.write_text("".join(f"{n} 0\n" for n in names))
        gray = like.blobs[accel_ends(like).input_blob].shape[1] == 1     # a one-channel net (MNIST-like)
        built = Net(data_layers_to_image_list(param, listing, str(folder).rstrip("/") + "/", max_batch=len(names),
                                              gray=gray),
                    TEST, level=level, stages=list(stages), weights=weights, accel=clean, log=NullLogger(),
                    source=model)
        ends = accel_ends(built)
        inputs, _, _ = candidates(built, -(-len(names) // built.blobs[ends.input_blob].shape[0]))
    inputs = inputs[:len(names)]
    canary = CanaryNet(model, weights, clean, built, len(names), level, stages)
    ref = canary.run(inputs, None)
    meta = {"format": FORMAT, "model_sha256": None, "quant_sha256": quant_sha256(acc.quant.layers),
            "count": len(names), "created_with": "cu-test --canaries DIR", "degraded_min": 0.9, "expected": [],
            "source": f"{folder}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}",
            "classes": canary.classes}
    return CanarySet(meta, inputs, np.full(len(names), -1, np.int32), ref, top5(ref, canary.classes))


def describe_margins(margin):
    finite = margin[np.isfinite(margin)]
    if not len(finite):
        return "no margins (one output)"
    return f"top-1/top-2 margins {float(finite.min()):g} … {float(finite.max()):g}"


def operating_point(freq, ser):
    """The `expected` entry's key: {freq_mhz} or {ser} (floats, as cu-test's acc.freq_mhz / acc.ser)."""
    return {"freq_mhz": float(freq)} if freq is not None else {"ser": float(ser)}

