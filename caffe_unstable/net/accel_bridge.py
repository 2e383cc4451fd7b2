"""The one place where a Caffe layer's forward goes to the accelerator (pipecnn.md §10.3-§10.5).

`plan(net)` decides, once per net and quantisation table, where each layer runs and what fixed-point fraction F
each blob holds, checking the table against the net (one line per problem) and logging every host layer once.
`runs(net, i)` / `forward(net, i, bottom, top)` are Net.forward_from_to's hook. Layers map onto the accelerator's
array-and-geometry calls here; the accel package never sees a Layer.

Where layers run: Convolution (2-D, dilation 1) and InnerProduct (axis 1, no transpose) with a table entry; ReLU
(slope 0) on fixed-point data, fused into the conv it follows in place; MAX pooling; PipeCNN's LRN (local_size 5,
alpha 1e-4, beta 0.75, k 1, across channels) on input F in [-8, 0]. Everything else runs on the host in float.
A max pool fed by a host float tensor runs on the accelerator at its consumers' frac_din (max commutes with the
monotone float -> fixed, so the consumers read the same int8 values either way).
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2

SRC = "accel_bridge.py:1"
F_PASS = ("Split", "Flatten", "Reshape")      # host layers that move values unchanged: F passes through


@dataclass
class NetPlan:
    accel: object
    quant: object
    kinds: dict = field(default_factory=dict)        # layer index -> "conv" | "relu" | "pool" | "lrn"
    formats: dict = field(default_factory=dict)      # conv layer index -> LayerFormat
    relu_fused: set = field(default_factory=set)     # conv layer indices whose in-place ReLU is fused
    frac_in: dict = field(default_factory=dict)      # pool/lrn layer index -> input F
    blob_frac: dict = field(default_factory=dict)    # blob id -> F of its values after the forward (None = float)
    host: dict = field(default_factory=dict)         # layer index -> reason it runs on the host


# -- what the accelerator can take ------------------------------------------------------------------------------
def conv_problem(layer, bottom_shape):
    """None when a Convolution/InnerProduct layer can run on the accelerator, else why not."""
    if layer.type == "InnerProduct":
        ip = layer.param.inner_product_param
        if ip.transpose:
            return "transpose: true (PipeCNN's FC is a conv over OIHW weights)"
        if ip.axis not in (1, -len(bottom_shape) + 1) or len(bottom_shape) < 2:
            return f"axis {ip.axis} (the accelerator's FC flattens everything after the batch axis)"
        return None
    if getattr(layer, "num_spatial_axes", 2) != 2 or getattr(layer, "channel_axis", 1) != 1:
        return "not a 2-D convolution over (N, C, H, W)"
    if any(d != 1 for d in layer.geo.dilation):
        return f"dilation {list(layer.geo.dilation)} (PipeCNN has none)"
    if len(layer.param.bottom) != 1 or len(layer.param.top) != 1:
        return "more than one bottom/top pair"
    return None


def lrn_problem(layer):
    lp = layer.param.lrn_param
    f32 = np.float32
    if lp.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        return "WITHIN_CHANNEL (PipeCNN's LRN is across channels)"
    if (lp.local_size, f32(lp.alpha), f32(lp.beta), f32(lp.k)) != (5, f32(1e-4), f32(0.75), f32(1.0)):
        return (f"local_size {lp.local_size}, alpha {lp.alpha:g}, beta {lp.beta:g}, k {lp.k:g}: PipeCNN's table "
                "implements only local_size 5, alpha 0.0001, beta 0.75, k 1")
    return None


def pool_problem(layer):
    pp = layer.param.pooling_param
    if pp.pool != caffe_pb2.PoolingParameter.MAX:
        return f"{caffe_pb2.PoolingParameter.PoolMethod.Name(pp.pool)} pooling (the accelerator has MAX only)"
    return None


def conv_geometry(layer, bottom_shape, hw):
    """The accelerator geometry of a Convolution or InnerProduct layer for this bottom shape."""
    from ..accel.geometry import ConvGeometry, fc_geometry

    n = bottom_shape[0]
    if layer.type == "InnerProduct":
        dims = list(bottom_shape[1:]) + [1, 1]
        c, h = dims[0], dims[1]
        w = int(np.prod(dims[2:]))
        return fc_geometry(n, c, h, w, layer.num_output, hw.vec_size, hw.lane_num, hw.pipe_depth)
    g = layer.geo
    _, c, h, w = bottom_shape
    return ConvGeometry(n, c, h, w, layer.num_output, g.group, g.kernel[0], g.kernel[1], g.stride[0], g.stride[1],
                        g.pad[0], g.pad[1], hw.vec_size, hw.lane_num, hw.pipe_depth)


# -- the plan ---------------------------------------------------------------------------------------------------
def plan(net):
    """The NetPlan of `net` for its accelerator and table (cached on the net until either changes)."""
    acc = net.accel
    cached = getattr(net, "_accel_plan", None)
    if cached is not None and cached.accel is acc and cached.quant is acc.quant:
        return cached
    p = build_plan(net, acc.quant, strict=True)
    said = net.__dict__.setdefault("_accel_logged", set())      # each line once per net
    lines = [f"layer '{net.layers[i].name}' ({net.layers[i].type}) runs on the host in float: {reason}"
             for i, reason in p.host.items() if net.layers[i].type != "Split"]
    lines += [f"bias of layer '{net.layers[i].name}' has no effect on the accelerator (m = {fmt.m})"
              for i, fmt in p.formats.items() if getattr(net.layers[i], "bias_term", False) and fmt.m >= 8]
    _check_fault_layers(net, acc, p)
    for line in lines:
        if line not in said:
            said.add(line)
            net.log.info(line, SRC)
    net._accel_plan = p
    return p


def _check_fault_layers(net, acc, p):
    """--fault-layers must name accelerated Convolution/InnerProduct layers of this net."""
    names = getattr(acc, "fault_layers", None)
    if not names:
        return
    convs = {net._layer_names[i] for i, kind in p.kinds.items() if kind == "conv"}
    for name in names:
        if name not in convs:
            raise CaffeUnstableError("--fault-layers", f"layer '{name}' is not an accelerated Convolution/"
                                                       f"InnerProduct layer of net '{net.name}' (those are: "
                                                       f"{', '.join(sorted(convs))})")


def fault_geometries(net):
    """[(layer index, layer name, faults.md §1.1 geometry dict)] of the accelerated conv/FC layers, in net order."""
    p = plan(net)
    acc = net.accel
    out = []
    for i, kind in sorted(p.kinds.items()):
        if kind == "conv":
            name = net._layer_names[i]
            geom = conv_geometry(net.layers[i], net._blob_list[net._bottom_ids[i][0]].shape, acc.hw)
            out.append((i, name, acc.fault_geometry(name, geom)))
    return out


def build_plan(net, quant, strict=True, frac_din_of=None):
    """Where each layer runs and the F of each blob. strict: every check of pipecnn.md §10.5 raises; otherwise
    (cu-quantize) a conv's frac_din is taken from the chain, or from frac_din_of(layer index) when its input is
    a host float tensor, and the table needs only frac_w / frac_dout."""
    acc = net.accel
    p = NetPlan(acc, quant)
    if quant is None:
        name = getattr(acc, "name", "numba")
        raise CaffeUnstableError("--quant", f"the {name} accelerator needs a quantization table (--quant "
                                            "FILE.quant.yaml or accel.open(..., quant=...); make one with cu-quantize)")
    names = net._layer_names
    convs = {i for i, l in enumerate(net.layers) if l.accel_op == "conv" and l.type in ("Convolution",
                                                                                           "InnerProduct")}
    conv_ok = {}
    for i in sorted(convs):
        layer = net.layers[i]
        why = conv_problem(layer, net._blob_list[net._bottom_ids[i][0]].shape)
        if why is None:
            conv_ok[i] = layer
        elif strict and names[i] in quant:
            raise CaffeUnstableError(quant.where(names[i]), f"layer '{names[i]}' ({layer.type}) cannot run on the "
                                                            f"accelerator: {why}; remove its entry from the table")
        else:
            p.host[i] = why
    if strict:
        _check_entries(net, quant, conv_ok)
    consumers = {}
    for i, bids in enumerate(net._bottom_ids):
        for b in bids:
            consumers.setdefault(b, []).append(i)
    frac = {}           # blob id -> current F (None: host float)
    producer = {}       # blob id -> conv layer index that wrote it last
    for i, layer in enumerate(net.layers):
        bids, tids = net._bottom_ids[i], net._top_ids[i]
        fin = [frac.get(b) for b in bids]
        if i in conv_ok:
            fmt = _format(net, quant, i, fin[0], strict, frac_din_of)
            p.kinds[i], p.formats[i] = "conv", fmt
            frac[tids[0]] = fmt.frac_dout
            producer[tids[0]] = i
            continue
        if i in p.host:
            _host(frac, producer, tids)
            continue
        kind, why = _classify(net, i, layer, fin, consumers, conv_ok, quant, p, frac_din_of)
        if kind is None:
            p.host[i] = why
            if layer.type in F_PASS or (layer.type == "Dropout" and layer.phase == caffe_pb2.TEST) or (
                    layer.type == "Concat" and fin and fin[0] is not None and all(f == fin[0] for f in fin)):
                for t in tids:
                    frac[t] = fin[0]
                    producer.pop(t, None)
            else:
                _host(frac, producer, tids)
            continue
        p.kinds[i] = kind
        if kind == "relu":
            src = producer.get(bids[0])
            if tids[0] == bids[0] and src is not None:
                p.relu_fused.add(src)
            frac[tids[0]] = fin[0]
            if tids[0] != bids[0]:
                producer.pop(tids[0], None)
        elif kind == "pool":
            frac[tids[0]] = p.frac_in[i]
            producer.pop(tids[0], None)
            for t in tids[1:]:
                frac[t] = None
        elif kind == "lrn":
            frac[tids[0]] = 0
            producer.pop(tids[0], None)
    p.blob_frac = frac
    return p


def _host(frac, producer, tids):
    for t in tids:
        frac[t] = None
        producer.pop(t, None)


def _check_entries(net, quant, conv_ok):
    names = net._layer_names
    wanted = {names[i] for i in conv_ok}
    extra = [n for n in quant.layers if n not in wanted]
    if wanted and extra and len(extra) == len(quant.layers):
        net_name = f" '{quant.net}'" if quant.net else ""
        raise CaffeUnstableError(quant.where(), f"this table is for another net{net_name}: no entry names an "
                                                f"accelerated layer of net '{net.name}' (expected "
                                                f"{', '.join(sorted(wanted)[:4])}{', ...' if len(wanted) > 4 else ''})")
    for i, layer in sorted(conv_ok.items()):
        if names[i] not in quant:
            raise CaffeUnstableError(quant.where(), f"layer '{names[i]}' ({layer.type}) has no entry: every "
                                                    "accelerated Convolution/InnerProduct needs {frac_w, frac_din, "
                                                    "frac_dout}")
    if extra:
        raise CaffeUnstableError(quant.where(extra[0]), f"layer '{extra[0]}': names no accelerated Convolution/"
                                                        f"InnerProduct layer of net '{net.name}'")


def _format(net, quant, i, f_in, strict, frac_din_of):
    from ..accel.quant import LayerFormat

    name = net._layer_names[i]
    layer = net.layers[i]
    fmt = quant[name]
    has_bias = bool(getattr(layer, "bias_term", False))
    if not strict:
        din = f_in if f_in is not None else (frac_din_of(i) if frac_din_of else fmt.frac_din)
        return LayerFormat(fmt.frac_w, din, fmt.frac_dout, fmt.w_bits)
    problem = fmt.problem(has_bias)
    if problem:
        raise CaffeUnstableError(quant.where(name), f"layer '{name}': {problem}")
    if f_in is not None and fmt.frac_din != f_in:
        bottom = net._blob_names[net._bottom_ids[i][0]]
        raise CaffeUnstableError(quant.where(name), f"layer '{name}': frac_din = {fmt.frac_din}, but its input "
                                                    f"'{bottom}' holds values with F = {f_in} (the producing "
                                                    f"layer's frac_dout through ReLU and pooling, 0 after LRN); "
                                                    f"set frac_din: {f_in}")
    return fmt


def _classify(net, i, layer, fin, consumers, conv_ok, quant, p, frac_din_of):
    """(kind, None) for a layer the accelerator runs, else (None, reason)."""
    t = layer.type
    f0 = fin[0] if fin else None
    if t == "ReLU":
        if layer.param.relu_param.negative_slope != 0:
            return None, "negative_slope != 0 (the accelerator's ReLU is max(y, 0))"
        if f0 is None:
            return None, "its input is a host float tensor"
        return "relu", None
    if t == "Pooling":
        why = pool_problem(layer)
        if why:
            return None, why
        if f0 is None:
            f0 = _consumer_frac(net, net._top_ids[i][0], consumers, conv_ok, quant, frac_din_of)
            if f0 is None:
                return None, "its input is a host float tensor and its consumers do not all read it at one frac_din"
        p.frac_in[i] = f0
        return "pool", None
    if t == "LRN":
        why = lrn_problem(layer)
        if why:
            return None, why
        if f0 is None:
            return None, "its input is a host float tensor"
        if not -8 <= f0 <= 0:
            return None, f"its input fraction F = {f0} is outside [-8, 0] (PipeCNN shifts q left by -F in 16 bits)"
        p.frac_in[i] = f0
        return "lrn", None
    return None, _host_reason(t)


def _consumer_frac(net, blob, consumers, conv_ok, quant, frac_din_of, depth=0):
    """The one frac_din at which every consumer of `blob` reads it (through Split/Flatten/Reshape), else None."""
    fracs = set()
    for j in consumers.get(blob, ()):
        layer = net.layers[j]
        if layer.type in F_PASS and depth < 8:
            for t in net._top_ids[j]:
                f = _consumer_frac(net, t, consumers, conv_ok, quant, frac_din_of, depth + 1)
                if f is None:
                    return None
                fracs.add(f)
            continue
        if j not in conv_ok:
            return None
        name = net._layer_names[j]
        if frac_din_of is not None:
            fracs.add(frac_din_of(j))
        elif name in quant:
            fracs.add(quant[name].frac_din)
        else:
            return None
    return fracs.pop() if len(fracs) == 1 else None


def _host_reason(t):
    if t in ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData", "Python"):
        return "a data layer"
    if t == "Dropout":
        return "Dropout is a host layer (Caffe's mask and scale)"
    if t == "Split":
        return "a copy"
    return f"the accelerator has no {t}"


# -- the hook -------------------------------------------------------------------------------------------------
def runs(net, i):
    return i in plan(net).kinds


def forward(net, i, bottom, top):
    p = plan(net)
    kind = p.kinds[i]
    layer = net.layers[i]
    acc = net.accel
    name = net._layer_names[i]
    if kind == "relu":
        layer.forward(bottom, top)        # max(q, 0) 2^-F: the same numbers the accelerator's int8 ReLU gives
        return
    if kind == "conv":
        x = bottom[0].data
        geom = conv_geometry(layer, x.shape, acc.hw)
        w = layer.blobs[0].data.reshape(geom.O, geom.Cg, geom.Kh, geom.Kw)
        b = layer.blobs[1].data if getattr(layer, "bias_term", False) else None
        fmt = p.formats[i]
        # what the backward needs (faults.md §10.2), kept where a backward is expected: TRAIN nets, and nets with
        # force_backward (pycaffe gradients of a deploy net); a TEST net's forward (cu-test) pays nothing for it
        keep = bool(net._layer_need_backward[i]) and (net.phase == 0 or getattr(net, "_force_backward", False))
        exact = keep and p.blob_frac.get(net._bottom_ids[i][0]) == fmt.frac_din
        acc.conv(name, x, w, b, geom, fmt, i in p.relu_fused, top[0].data, layer_index=i, keep=keep,
                 input_exact=exact)
        return
    if net._layer_need_backward[i] or len(top) > 1:
        layer.forward(bottom, top)        # the host's internal state for backward (argmax, LRN scale), mask top
    x = bottom[0].data
    n, c, h, w = x.shape
    if kind == "pool":
        from ..accel.geometry import PoolStage

        st = PoolStage(n, c, h, w, layer.kernel[0], layer.kernel[1], layer.stride[0], layer.stride[1],
                       layer.pad[0], layer.pad[1], layer.out_hw[0], layer.out_hw[1])
        acc.pool(name, x, p.frac_in[i], st, top[0].data)
    else:
        from ..accel.geometry import LrnStage

        acc.lrn(name, x, LrnStage(n, c, h, w, p.frac_in[i]), top[0].data)


def backward(net, i, top, propagate_down, bottom):
    """Net.backward_from_to's hook for a layer the accelerator ran (faults.md §10.2). Convolution/InnerProduct:
    Caffe's float backward evaluated at the accelerator's values: the input the launch consumed (its int8 image,
    activation-memory faults included) as bottom data; with ste "clipped", no gradient through outputs whose
    fault-free value saturated; with backward_weights "quantized", the device's int8 weights for the bottom diff.
    Other accelerated layers run their host backward on the read-back blobs (ReLU masks from the accelerator's
    outputs; max-pool argmax and LRN scale recomputed from them in forward)."""
    layer = net.layers[i]
    acc = net.accel
    state = acc.backward_state.get(net._layer_names[i]) if plan(net).kinds.get(i) == "conv" else None
    if state is None:
        layer.backward(top, propagate_down, bottom)
        return
    if acc.ste == "clipped" and state.clean_saturated is not None:
        np.putmask(top[0].diff, state.clean_saturated.reshape(top[0].diff.shape), 0)
    swaps = []
    if state.input is not None:
        swaps.append((bottom[0].data, state.input.reshape(bottom[0].data.shape)))
    if acc.backward_weights == "quantized" and any(propagate_down):
        w = layer.blobs[0].data
        swaps.append((w, acc.backward_weights_of(net._layer_names[i], w.shape)))
    saved = [dst.copy() for dst, _ in swaps]
    try:
        for dst, value in swaps:
            dst[...] = value
        layer.backward(top, propagate_down, bottom)
    finally:
        for (dst, _), old in zip(swaps, saved):
            dst[...] = old


# -- introspection (tests, cu-quantize, docs) ----------------------------------------------------------------
def where_layers_run(net):
    """{layer name: "accelerator" | "host"} for the net's accelerator and table."""
    p = plan(net)
    return {name: ("accelerator" if i in p.kinds else "host") for i, name in enumerate(net._layer_names)}


def blob_fracs(net):
    """{blob name: F} for every blob an accelerated layer writes (data == q 2^-F after a forward)."""
    p = plan(net)
    return {net._blob_names[b]: f for b, f in p.blob_frac.items() if f is not None}
