"""Choosing a net's fixed-point formats on calibration data: PipeCNN's rule, as cu-quantize runs it
(pipecnn.md §10.5; PAPER Fig. 5, DOC project_intel/data/README.md:16).

1. Run the float net on the calibration images: float top-1/top-5, each conv/FC layer's max|W|, each blob's max|y|.
2. Start values: frac_w = the largest F with max|W| 2^F <= 127 (weights only); frac_dout = the largest F with
   max|y| 2^F <= 127; frac_din from the chain (a host float input: from its own range).
3. In forward order, each layer tries frac_w in {F_w, F_w + 1} x frac_dout in {F_out - 1, F_out, F_out + 1}
   (earlier layers at their chosen values, later ones at their start values, the chain kept consistent) and keeps
   the best by top-1, then top-5, then the larger fractions. Convs whose outputs meet in a Concat share frac_dout.
4. The table is written even when the loss stays >= 1 % (with a warning naming the losses).
5. Optional (cu-quantize --refine R, Search.refine): a coordinate search from that table over each layer's frac_w,
   frac_dout, both together, and the frac_din of layers reading a host float tensor, every move judged by the whole
   net's (top-1, top-5, -loss) on the calibration images; the tables it tries are valid PipeCNN tables.
"""
from dataclasses import dataclass, field

import numpy as np

from ..accel.quant import LayerFormat, largest_frac
from ..accel.quant_table import QuantTable
from ..errors import CaffeUnstableError
from ..net import accel_bridge

DATA_TYPES = ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData")


@dataclass
class Calibration:
    """Calibration batches for a net: inputs[b] = {blob name: float32 array}, labels (n,) ints, the score blob
    ranked for top-1/top-5, and the first layer to run (after the data layers)."""

    inputs: list
    labels: np.ndarray
    score: str
    start: int = 0
    source: str = "arrays"

    @property
    def images(self):
        return int(len(self.labels))


def score_and_label(net):
    """(score blob, label blob or None): the bottoms of the first Accuracy (or loss) layer, else the last output."""
    split_of = {t: net._bottom_ids[i][0] for i, layer in enumerate(net.layers) if layer.type == "Split"
                for t in net._top_ids[i]}
    for i, layer in enumerate(net.layers):
        if layer.type == "Accuracy" or (layer.is_loss and len(net._bottom_ids[i]) >= 2):
            score, label = net._bottom_ids[i][:2]
            return net._blob_names[split_of.get(score, score)], net._blob_names[split_of.get(label, label)]
    return net.outputs[-1], None


def first_compute_layer(net):
    last = -1
    for i, layer in enumerate(net.layers):
        if layer.type in DATA_TYPES:
            last = i
    return last + 1


def calibration_from_data_layers(net, images, source="the TEST data source"):
    """Run the net's own data layers (float) until `images` images are collected, as `caffe test` reads them."""
    score, label = score_and_label(net)
    start = first_compute_layer(net)
    if start == 0 or label is None:
        raise CaffeUnstableError(net._source, "calibration needs a net with a data layer and labels (an Accuracy or "
                                              "loss layer naming them); pass a train_test prototxt")
    feeds = sorted({net._blob_names[b] for i in range(start) for b in net._top_ids[i]})
    inputs, labels, got = [], [], 0
    while got < images:
        net._forward(0, start - 1)
        batch = {name: net.blobs[name].data.copy() for name in feeds}
        take = min(images - got, len(batch[label]))
        inputs.append({k: v[:take] for k, v in batch.items()})
        labels.append(batch[label][:take].reshape(-1).astype(np.int64))
        got += take
    return Calibration(inputs, np.concatenate(labels), score, start, source)


def calibration_from_arrays(net, images, labels, batch=50):
    """Calibration from float32 NCHW images fed into the net's first input."""
    name = net.inputs[0]
    inputs = [{name: np.ascontiguousarray(images[i:i + batch], np.float32)} for i in range(0, len(images), batch)]
    return Calibration(inputs, np.asarray(labels, np.int64), score_and_label(net)[0], first_compute_layer(net))


def evaluate(net, calib, observe=None):
    """(top-1, top-5) of the net on the calibration set; observe(net) is called after every batch."""
    counts = np.zeros(2, np.int64)
    seen = 0
    for feed in calib.inputs:
        n = _feed(net, feed)
        net._forward(calib.start, len(net.layers) - 1)
        counts += _topk(net.blobs[calib.score].data.reshape(n, -1), calib.labels[seen:seen + n])
        seen += n
        if observe is not None:
            observe(net)
    return counts[0] / seen, counts[1] / seen


@dataclass
class Ranges:
    weights: dict = field(default_factory=dict)     # conv layer index -> max|W|
    blobs: dict = field(default_factory=dict)       # blob id -> max|data| over the calibration set


def measure(net, calib):
    """Float accuracy and the ranges of step 1."""
    r = Ranges()

    def observe(n):
        for b, blob in enumerate(n._blob_list):
            v = float(np.abs(blob.data).max()) if blob.count else 0.0
            r.blobs[b] = max(r.blobs.get(b, 0.0), v)

    acc = evaluate(net, calib, observe)
    for i, layer in enumerate(net.layers):
        if layer.accel_op == "conv" and layer.blobs:
            r.weights[i] = float(np.abs(layer.blobs[0].data).max())
    return acc, r


class Search:
    """The layer-by-layer search of step 3 over one accelerated net."""

    def __init__(self, net, calib, ranges, log=None):
        self.net, self.calib, self.ranges, self.log = net, calib, ranges, log
        probe = accel_bridge.build_plan(net, _Everything(net), strict=False, frac_din_of=lambda i: 0)
        self.convs = sorted(probe.formats)
        self.names = {i: net._layer_names[i] for i in self.convs}
        self.tied = _concat_groups(net, self.convs)
        self.din = {}           # conv index -> frac_din, for the convs that read a host float tensor (refine)
        made = [i for i in range(len(net.layers)) if net.layers[i].type != "Split"
                and net._blob_names.index(calib.score) in net._top_ids[i]] if calib.score in net._blob_names else []
        self.probabilities = bool(made) and net.layers[made[-1]].type == "Softmax"
        self.start = {}
        for i in self.convs:
            fw = largest_frac(ranges.weights.get(i, 0.0))
            fo = largest_frac(ranges.blobs.get(net._top_ids[i][0], 0.0))
            self.start[i] = [fw, fo]
        for group in self.tied.values():
            fo = min(self.start[i][1] for i in group)
            for i in group:
                self.start[i][1] = fo
        repaired = self.table(self.start, repair=True)
        if repaired is not None:
            self.start = {i: [repaired[self.names[i]].frac_w, repaired[self.names[i]].frac_dout] for i in self.convs}
        self.chosen = {i: list(v) for i, v in self.start.items()}
        free = set()
        accel_bridge.build_plan(net, _Everything(net), strict=False, frac_din_of=lambda i: free.add(i) or 0)
        self.free_din = sorted(free)     # convs reading a host float tensor (the input, a host avg pool's output)

    def host_din(self, i, din=None):
        din = self.din if din is None else din
        if i in din:
            return din[i]
        return largest_frac(self.ranges.blobs.get(self.net._bottom_ids[i][0], 0.0))

    def table(self, values, repair=False, din=None):
        """The chain-consistent table for {conv index: [frac_w, frac_dout]} (and {conv index: frac_din} for the
        convs that read a host float tensor, else from its range); None when a layer breaks the kernel's
        1 <= n, m <= 32, unless `repair` lowers such a layer's frac_dout until it holds."""
        values = {k: list(v) for k, v in values.items()}
        for _ in range(len(self.convs) + 1):
            rough = QuantTable({self.names[i]: LayerFormat(fw, 0, fo) for i, (fw, fo) in values.items()})
            p = accel_bridge.build_plan(self.net, rough, strict=False,
                                        frac_din_of=lambda i: self.host_din(i, din))
            bad = [i for i in self.convs
                   if p.formats[i].problem(bool(getattr(self.net.layers[i], "bias_term", False)))]
            if not bad:
                return QuantTable({self.names[i]: p.formats[i] for i in self.convs}, net=self.net.name)
            if not repair:
                return None
            for i in bad:
                f = p.formats[i]
                limit = f.frac_w + f.frac_din - 1
                if getattr(self.net.layers[i], "bias_term", False):
                    limit = min(limit, f.frac_w - 1)
                values[i][1] = min(values[i][1], limit)
        return None

    def candidates(self, k, tables):
        """(top-1, top-5, mean loss) of each table (loss: -log of the true class's softmax score); they agree on the
        layers before conv k, so each batch runs that prefix once and only the rest of the net per table (blobs that
        later in-place layers rewrite are restored)."""
        net, calib = self.net, self.calib
        end = len(net.layers) - 1
        early = {b for i in range(k) for b in net._top_ids[i]}
        rewritten = sorted(early & {b for i in range(k, end + 1) for b in net._top_ids[i]})
        counts = np.zeros((len(tables), 2), np.int64)
        loss = np.zeros(len(tables))
        seen = 0
        for feed in calib.inputs:
            n = _feed(net, feed)
            net.accel.quant = tables[0]
            if k > calib.start:
                net._forward(calib.start, k - 1)
            saved = [net._blob_list[b].data.copy() for b in rewritten]
            labels = calib.labels[seen:seen + n]
            for c, table in enumerate(tables):
                for b, data in zip(rewritten, saved):
                    net._blob_list[b].data[...] = data
                net.accel.quant = table
                net._forward(max(k, calib.start), end)
                scores = net.blobs[calib.score].data.reshape(n, -1)
                counts[c] += _topk(scores, labels)
                loss[c] += _loss(scores, labels, self.probabilities)
            seen += n
        return [(c[0] / seen, c[1] / seen, v / seen) for c, v in zip(counts, loss)]

    def run(self):
        best_table = None
        best = None
        done_groups = set()
        for i in self.convs:
            group = self.tied.get(i)
            fw0, fo0 = self.start[i]
            outs = [self.chosen[i][1]] if group is not None and id(group) in done_groups else [fo0 - 1, fo0, fo0 + 1]
            trials = []
            for fw in (fw0, fw0 + 1):
                for fo in outs:
                    values = {k: list(v) for k, v in self.chosen.items()}
                    for k in (group or [i]):
                        values[k][1] = fo
                    values[i][0] = fw
                    table = self.table(values)
                    if table is not None:
                        trials.append(((fw + fo, fo), values, table))
            if not trials:
                raise CaffeUnstableError(f"layer '{self.names[i]}'", "no format around the start values satisfies "
                                                                     "the kernel's 1 <= n, m <= 32")
            scores = self.candidates(i, [t[2] for t in trials])
            key, values, acc, table = max(((s[:2] + t[0], t[1], s[:2], t[2]) for s, t in zip(scores, trials)),
                                          key=lambda t: t[0])
            self.chosen = values
            best, best_table = acc, table
            self.net.accel.quant = table
            if group is not None:
                done_groups.add(id(group))
            if self.log:
                f = table[self.names[i]]
                self.log.info(f"layer '{self.names[i]}': frac_w {f.frac_w}, frac_din {f.frac_din}, frac_dout "
                              f"{f.frac_dout}: top-1 {acc[0]:.4f}, top-5 {acc[1]:.4f}", "quantize.py:1")
        return best_table, best


    def refine(self, table, rounds=2, by="accuracy"):
        """Coordinate search from `table` (the result of run()): per layer in forward order, frac_w +-1, frac_dout +-1
        (a Concat group together), both +-1 (n and m kept), and frac_din +-1 where the layer reads a host float
        tensor; every move evaluated by the accuracy of the whole net on the calibration set. A move is kept when it
        raises (top-1, top-5, -loss) (by="accuracy"), or lowers the loss (by="loss": smoother than top-1 counts on
        a few hundred images, which a search can overfit); up to `rounds` passes, stopping early when a pass keeps
        nothing."""
        values = {i: [table[self.names[i]].frac_w, table[self.names[i]].frac_dout] for i in self.convs}
        din = {i: table[self.names[i]].frac_din for i in self.free_din}
        current = self.table(values, din=din)
        acc = self.candidates(self.calib.start, [current])[0]
        _key = _loss_key if by == "loss" else _accuracy_key
        key = _key(acc)
        if self.log:
            self.log.info(f"refine: start top-1 {acc[0]:.4f}, top-5 {acc[1]:.4f}, loss {acc[2]:.4f}", "quantize.py:1")
        for r in range(rounds):
            kept = 0
            done = set()
            for i in self.convs:
                group = self.tied.get(i) or [i]
                moves = [(d, 0, 0) for d in (-1, 1)] + [(d, d, 0) for d in (-1, 1)]
                if id(group) not in done or len(group) == 1:
                    moves += [(0, d, 0) for d in (-1, 1)]
                done.add(id(group))
                if i in din:
                    moves += [(0, 0, d) for d in (-1, 1)]
                trials = []
                for dw, do, dd in moves:
                    v = {k: list(x) for k, x in values.items()}
                    v[i][0] += dw
                    for k in (group if do else ()):
                        v[k][1] += do
                    dn = dict(din)
                    if dd:
                        dn[i] += dd
                    t = self.table(v, din=dn)
                    if t is not None:
                        trials.append((self._first_change(current, t), v, dn, t))
                best = None
                for k in sorted({t[0] for t in trials}):
                    group_trials = [t for t in trials if t[0] == k]
                    for t, a in zip(group_trials, self.candidates(k, [g[3] for g in group_trials])):
                        if best is None or _key(a) > _key(best[0]):
                            best = (a, t)
                if best is not None and _key(best[0]) > key:
                    acc, (_, values, din, current) = best
                    key = _key(acc)
                    kept += 1
                    if self.log:
                        f = current[self.names[i]]
                        self.log.info(f"refine {r + 1}: layer '{self.names[i]}': frac_w {f.frac_w}, frac_din "
                                      f"{f.frac_din}, frac_dout {f.frac_dout}: top-1 {acc[0]:.4f}, top-5 "
                                      f"{acc[1]:.4f}, loss {acc[2]:.4f}", "quantize.py:1")
            if not kept:
                break
        self.net.accel.quant = current
        return current, acc[:2]

    def _first_change(self, a, b):
        """The first layer whose output differs between tables a and b (a conv's format or a pool's input F)."""
        pa = accel_bridge.build_plan(self.net, a, strict=False, frac_din_of=lambda i: a[self.names[i]].frac_din)
        pb = accel_bridge.build_plan(self.net, b, strict=False, frac_din_of=lambda i: b[self.names[i]].frac_din)
        diff = [i for i in self.convs if pa.formats[i] != pb.formats[i]]
        diff += [i for i in set(pa.frac_in) | set(pb.frac_in) if pa.frac_in.get(i) != pb.frac_in.get(i)]
        return min(diff) if diff else len(self.net.layers) - 1


def _accuracy_key(acc):
    return acc[0], acc[1], -acc[2]


def _loss_key(acc):
    return -acc[2], acc[0], acc[1]


def _feed(net, feed):
    n = len(next(iter(feed.values())))
    for name, value in feed.items():
        blob = net.blobs[name]
        if blob.shape != value.shape:
            blob.reshape(*value.shape)        # the layers from calib.start on reshape their tops
        blob.data[...] = value
    return n


def _loss(scores, labels, probabilities):
    """Summed cross-entropy of the true classes: -log p (scores already a softmax) or -log softmax(scores)."""
    scores = np.asarray(scores, np.float64)
    if probabilities:
        p = scores[np.arange(len(labels)), labels]
        return float(-np.log(np.maximum(p, 1e-30)).sum())
    z = scores - scores.max(axis=1, keepdims=True)
    return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]).sum())


def _topk(scores, labels):
    """(top-1, top-5) hits by Caffe's Accuracy rule: ties count against the true class (a hit needs fewer than k
    other classes scoring >= it), which matters for int8 scores."""
    true = scores[np.arange(len(labels)), labels]
    rank = (scores >= true[:, None]).sum(axis=1) - 1
    return np.array([(rank < 1).sum(), (rank < 5).sum()])


class _Everything:
    """A stand-in table naming every layer (to find which convs the accelerator takes)."""

    def __init__(self, net):
        self.names = set(net._layer_names)
        self.net = None

    def __contains__(self, name):
        return name in self.names

    def __getitem__(self, name):
        return LayerFormat(8, 0, 0)

    def where(self, name=None):
        return "<calibration>"


def _concat_groups(net, convs):
    """conv index -> the list of convs whose top blobs are bottoms of one Concat (they must share frac_dout)."""
    top_of = {net._top_ids[i][0]: i for i in convs}
    groups = {}
    for i, layer in enumerate(net.layers):
        if layer.type != "Concat":
            continue
        members = [top_of[b] for b in net._bottom_ids[i] if b in top_of]
        if len(members) < 2:
            continue
        merged = set(members)
        for m in members:
            merged |= set(groups.get(m, ()))
        group = sorted(merged)
        for m in group:
            groups[m] = group
    return groups


def choose_table(float_net, accel_net, calib, log=None, refine=0, start=None, refine_by="accuracy"):
    """Run steps 1-3 (and `refine` rounds of Search.refine); returns (table, report dict with the float and fixed
    accuracies). `start`: a table for this net that replaces steps 2-3 (its refinement goes on from it)."""
    (f1, f5), ranges = measure(float_net, calib)
    if log:
        log.info(f"float: top-1 {f1:.4f}, top-5 {f5:.4f} on {calib.images} calibration images", "quantize.py:1")
    search = Search(accel_net, calib, ranges, log)
    if start is None:
        table, (q1, q5) = search.run()
    else:
        table = start
        q1, q5, _ = search.candidates(calib.start, [start])[0]
    if refine:
        table, (q1, q5) = search.refine(table, refine, refine_by)
    report = {"images": calib.images, "source": calib.source,
              "float": {"top1": float(f1), "top5": float(f5)}, "fixed": {"top1": float(q1), "top5": float(q5)}}
    table.comments = ["calibration: {images: %d, source: %s, float: {top1: %.4f, top5: %.4f}, "
                      "fixed: {top1: %.4f, top5: %.4f}}" % (calib.images, calib.source, f1, f5, q1, q5)]
    return table, report


def start_table(float_net, accel_net, calib):
    """The start values of step 2 alone, chain-consistent (frac_dout lowered where n or m would be < 1)."""
    _, ranges = measure(float_net, calib)
    search = Search(accel_net, calib, ranges)
    return search.table(search.start, repair=True)
