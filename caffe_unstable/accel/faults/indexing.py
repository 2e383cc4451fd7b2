"""Fault geometry of one accelerated conv/FC layer and PipeCNN's hardware numbering (faults.md §1.1).

The geometry is a plain dict with the keys of faults.md §2.2 (`VEC_SIZE, LANE_NUM, PIPE_DEPTH`, the register
widths, `Kh, Kw, Cg, Cp, L, O, Op, po, conv_y, conv_x, N_MAC, N_ADD, N_WBYTES, N_ABYTES`) plus the layer's own
`Cin, H, W_in, stride, pad, group`, exactly as `fault_vectors.json` lists them. The hardware output index
`out = ((z·conv_y + y)·conv_x + x)·LANE + lane` numbers MACs (k = (out·L + t)·VEC + v) and adds (a = out·L + t)
for sampling only; records always name real outputs (o, y, x).
"""
import numpy as np

from ...errors import CaffeUnstableError

GEOMETRY_KEYS = ("VEC_SIZE", "LANE_NUM", "PIPE_DEPTH", "width_product", "width_accumulator", "width_final",
                 "Kh", "Kw", "Cg", "Cp", "L", "O", "Op", "po", "conv_y", "conv_x",
                 "N_MAC", "N_ADD", "N_WBYTES", "N_ABYTES")


def _ceil_to(a, b):
    return -(-a // b) * b


def conv_geometry(Cin, H, W_in, O, Kh, Kw, stride=1, pad=0, group=1, vec_size=4, lane_num=16, pipe_depth=6,
                  width_product=32, width_accumulator=32, width_final=32):
    """The fault geometry dict of a Convolution (an InnerProduct over (C, H, W) is Kh = H, Kw = W, stride = H).

    `stride` and `pad` are an int or an (h, w) pair (Caffe's stride_h/stride_w, pad_h/pad_w).
    """
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (pad, pad) if np.isscalar(pad) else pad
    if Cin % group or O % group:
        raise CaffeUnstableError("geometry", f"group {group} must divide Cin = {Cin} and O = {O}")
    Cg = Cin // group
    Cp = _ceil_to(Cg, vec_size)
    L = Kh * Kw * Cp // vec_size
    Op = _ceil_to(O, lane_num)
    conv_y = (H + 2 * ph - Kh) // sh + 1
    conv_x = (W_in + 2 * pw - Kw) // sw + 1
    n_out = Op * conv_y * conv_x
    return {
        "Cin": Cin, "H": H, "W_in": W_in, "O": O, "Kh": Kh, "Kw": Kw,
        "stride": stride if np.isscalar(stride) else [sh, sw], "pad": pad if np.isscalar(pad) else [ph, pw],
        "group": group, "VEC_SIZE": vec_size, "LANE_NUM": lane_num, "PIPE_DEPTH": pipe_depth,
        "width_product": width_product, "width_accumulator": width_accumulator, "width_final": width_final,
        "Cg": Cg, "Cp": Cp, "L": L, "Op": Op, "po": (Op - O) // 2, "conv_y": conv_y, "conv_x": conv_x,
        "N_MAC": n_out * L * vec_size, "N_ADD": n_out * L,
        "N_WBYTES": Op * Cp * Kh * Kw + Op, "N_ABYTES": _ceil_to(Cin, vec_size) * H * W_in,
    }


def geometry_from(conv, widths=(32, 32, 32)):
    """Geometry dict from an object with `C, H, W, O, group, Kh, Kw, stride_h, stride_w, pad_h, pad_w, vec, lane,
    pipe` attributes (accel.geometry.ConvGeometry) and the (product, accumulator, final) register widths."""
    stride = conv.stride_h if conv.stride_h == conv.stride_w else (conv.stride_h, conv.stride_w)
    pad = conv.pad_h if conv.pad_h == conv.pad_w else (conv.pad_h, conv.pad_w)
    return conv_geometry(conv.C, conv.H, conv.W, conv.O, conv.Kh, conv.Kw, stride, pad, conv.group,
                         conv.vec, conv.lane, conv.pipe, *widths)


def site_width(geometry, site):
    """Register width of MAC-flip site code 0 product, 1 accumulator, 2 final."""
    key = ("width_product", "width_accumulator", "width_final")[site]
    return geometry.get(key, 32)


def decode_out(out, geometry):
    """Hardware output index -> (o, y, x, lane, valid): o is the real channel, valid False on padded lanes."""
    out = np.asarray(out, dtype=np.int64)
    lane_num, cx, cy = geometry["LANE_NUM"], geometry["conv_x"], geometry["conv_y"]
    lane = out % lane_num
    x = (out // lane_num) % cx
    y = (out // (lane_num * cx)) % cy
    z = out // (lane_num * cx * cy)
    o = z * lane_num + lane - geometry["po"]
    valid = (o >= 0) & (o < geometry["O"])
    return o, y, x, lane, valid


def encode_out(o, y, x, geometry):
    """(real o, y, x) -> hardware output index (the inverse of decode_out on real outputs)."""
    op = np.asarray(o, dtype=np.int64) + geometry["po"]
    lane_num = geometry["LANE_NUM"]
    z, lane = op // lane_num, op % lane_num
    return ((z * geometry["conv_y"] + y) * geometry["conv_x"] + x) * lane_num + lane


def lane_of(o, geometry):
    """Lane of real output channel o: (o + po) mod LANE."""
    return (np.asarray(o, dtype=np.int64) + geometry["po"]) % geometry["LANE_NUM"]


def output_index(o, y, x, geometry):
    """Real output index oidx = (o·conv_y + y)·conv_x + x (the per-add jitter counters of §3.3)."""
    return (np.asarray(o, dtype=np.int64) * geometry["conv_y"] + y) * geometry["conv_x"] + x


def decode_mac(k, geometry):
    """Hardware MAC index k -> (o, y, x, t, v, valid) (faults.md §4.2, count `hardware`)."""
    k = np.asarray(k, dtype=np.int64)
    vec, L = geometry["VEC_SIZE"], geometry["L"]
    v = k % vec
    t = (k // vec) % L
    o, y, x, _, valid = decode_out(k // (vec * L), geometry)
    return o, y, x, t, v, valid


def model_mac_count(geometry):
    """N for count `model`: the Caffe layer's real MACs, O·conv_y·conv_x·Cg·Kh·Kw."""
    g = geometry
    return g["O"] * g["conv_y"] * g["conv_x"] * g["Cg"] * g["Kh"] * g["Kw"]


def decode_model_mac(k, geometry):
    """Caffe MAC index k = ((((o·conv_y + y)·conv_x + x)·Cg + c)·Kh + ky)·Kw + kx -> (o, y, x, t, v) (§4.2)."""
    k = np.asarray(k, dtype=np.int64)
    g = geometry
    kx = k % g["Kw"]
    ky = (k // g["Kw"]) % g["Kh"]
    c = (k // (g["Kw"] * g["Kh"])) % g["Cg"]
    rest = k // (g["Kw"] * g["Kh"] * g["Cg"])
    x = rest % g["conv_x"]
    y = (rest // g["conv_x"]) % g["conv_y"]
    o = rest // (g["conv_x"] * g["conv_y"])
    vec = g["VEC_SIZE"]
    t = ((c // vec) * g["Kh"] + ky) * g["Kw"] + kx
    return o, y, x, t, c % vec


def decode_add(a, geometry):
    """Add index a = out·L + t -> (o, y, x, t, valid) (the `rate` model's positions, §5.6)."""
    a = np.asarray(a, dtype=np.int64)
    L = geometry["L"]
    o, y, x, _, valid = decode_out(a // L, geometry)
    return o, y, x, a % L, valid
