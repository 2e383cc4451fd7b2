"""Memory upsets: bit flips in the weight/bias image and the input-activation image of a layer (faults.md §6.1-6.2).

Addresses are logical bytes of PipeCNN's images: the parameter image is the padded weights [Op][Cp][Kh][Kw]
(real filter o at o' = o + po, channels c < Cg) followed by the padded bias [Op]; the activation image is the int8
input [Cip][H][W], Cip = ceil(Cin/VEC)·VEC. Bit index k → addr = k div 8, bit = k mod 8; a flip XORs the byte.
Flips in padding are real chances (the hardware stores those bits) and have no visible effect.
"""
import numpy as np

from ...errors import CaffeUnstableError
from .plan import MEM_EVENT_DTYPE, LayerPlan, records
from .rng import sample_distinct

MAX_PROB = 0.01
SCOPES = ("buffer", "ddr")


def sample_bit_flips(rng, n_bytes, p):
    """F ~ Binomial(8·n_bytes, p), then F distinct bit positions -> (addr, bit) (streams 5 and 6)."""
    F = int(rng.binomial(8 * n_bytes, p))
    k = sample_distinct(rng, 8 * n_bytes, F) if F else np.empty(0, np.int64)
    return k // 8, k % 8


def toggle_events(previous, new):
    """The cumulative DDR set since the last upload: a bit flipped twice is back to clean (symmetric difference)."""
    both = np.concatenate([previous, new])
    key = both["addr"].astype(np.int64) * 8 + both["bit"]
    uniq, counts = np.unique(key, return_counts=True)
    keep = uniq[counts % 2 == 1]
    return records(MEM_EVENT_DTYPE, ["n", "addr", "bit"], n=np.full(len(keep), -1), addr=keep // 8, bit=keep % 8)


class MemoryFlips:
    """Per-forward upsets of stored bits at `weight_bit_flip_prob` / `act_bit_flip_prob` per bit.

    weight_scope "buffer": independent per image (key (layer, image)); "ddr": shared by every image (n = −1),
    persistent until `upload()` (the plan lists the cumulative set since the last upload).
    """

    name = "memory"

    def __init__(self, weight_bit_flip_prob=0.0, weight_scope="buffer", act_bit_flip_prob=0.0):
        for key, p in (("weight_bit_flip_prob", weight_bit_flip_prob), ("act_bit_flip_prob", act_bit_flip_prob)):
            if not 0.0 <= float(p) <= MAX_PROB:
                raise CaffeUnstableError(f"soft_errors.{key}", f"must be in [0, {MAX_PROB}], got {p}")
        if weight_scope not in SCOPES:
            raise CaffeUnstableError("soft_errors.weight_scope", f"must be buffer or ddr, got {weight_scope!r}")
        self.p_weight, self.p_act, self.weight_scope = float(weight_bit_flip_prob), float(act_bit_flip_prob), \
            weight_scope
        self._ddr = {}

    def upload(self):
        """Weights were written to the device again: DDR upsets are gone."""
        self._ddr.clear()

    def plan(self, op, geometry, rng):
        w_cols, a_cols = [], []
        for n in range(op.batch):
            if self.p_weight and self.weight_scope == "buffer":
                addr, bit = sample_bit_flips(rng.generator("weight_mem", op.layer_index, n), geometry["N_WBYTES"],
                                             self.p_weight)
                w_cols.append((np.full(len(addr), n), addr, bit))
            if self.p_act:
                addr, bit = sample_bit_flips(rng.generator("act_mem", op.layer_index, n), geometry["N_ABYTES"],
                                             self.p_act)
                a_cols.append((np.full(len(addr), n), addr, bit))
        weight = _events(w_cols)
        if self.p_weight and self.weight_scope == "ddr":
            addr, bit = sample_bit_flips(rng.generator("weight_mem", op.layer_index, 0), geometry["N_WBYTES"],
                                         self.p_weight)
            new = records(MEM_EVENT_DTYPE, None, n=np.full(len(addr), -1), addr=addr, bit=bit)
            weight = self._ddr[op.layer_index] = toggle_events(self._ddr.get(op.layer_index, new[:0]), new)
        return LayerPlan(op.layer_index, op.layer_name, geometry, weight_events=weight, act_events=_events(a_cols))


def _events(cols):
    if not cols:
        return np.zeros(0, MEM_EVENT_DTYPE)
    n, addr, bit = (np.concatenate(c) for c in zip(*cols))
    return records(MEM_EVENT_DTYPE, ["n", "addr", "bit"], n=n, addr=addr, bit=bit)


# -- the images themselves (for the reference and backends) -----------------------------------------------------
def parameter_image(weights, bias, geometry):
    """int8 [N_WBYTES]: padded weights [Op][Cp][Kh][Kw] (Caffe's [O][Cg][Kh][Kw] at o + po), then padded bias."""
    g = geometry
    wp = np.zeros((g["Op"], g["Cp"], g["Kh"], g["Kw"]), np.int8)
    wp[g["po"]:g["po"] + g["O"], :g["Cg"]] = np.asarray(weights, dtype=np.int8).reshape(g["O"], g["Cg"], g["Kh"],
                                                                                          g["Kw"])
    bp = np.zeros(g["Op"], np.int8)
    bp[g["po"]:g["po"] + g["O"]] = 0 if bias is None else np.asarray(bias, dtype=np.int8)
    return np.concatenate([wp.ravel(), bp])


def split_parameter_image(image, geometry):
    """The inverse of parameter_image on the real filters: (weights [O][Cg][Kh][Kw], bias [O])."""
    g = geometry
    nw = g["Op"] * g["Cp"] * g["Kh"] * g["Kw"]
    wp = image[:nw].reshape(g["Op"], g["Cp"], g["Kh"], g["Kw"])
    return wp[g["po"]:g["po"] + g["O"], :g["Cg"]].copy(), image[nw:][g["po"]:g["po"] + g["O"]].copy()


def activation_image(x, geometry):
    """int8 [N_ABYTES]: the input [Cin][H][W] stored as [Cip][H][W] with zero channels appended."""
    g = geometry
    cip = g["N_ABYTES"] // (g["H"] * g["W_in"])
    img = np.zeros((cip, g["H"], g["W_in"]), np.int8)
    img[:g["Cin"]] = x
    return img.ravel()


def flip_bytes(image, addr, bit):
    """A copy of the int8 image with bit `bit` of byte `addr` XORed, for each (addr, bit) (repeats cancel)."""
    out = image.view(np.uint8).copy()
    np.bitwise_xor.at(out, np.asarray(addr, dtype=np.int64), (1 << np.asarray(bit, dtype=np.int64)).astype(np.uint8))
    return out.view(np.int8)


def force_bytes(image, addr, bit, value):
    """A copy of the int8 image with bit `bit` of byte `addr` forced to `value` (memory stuck-at)."""
    out = image.view(np.uint8).copy()
    for a, b, v in zip(np.atleast_1d(addr), np.atleast_1d(bit), np.atleast_1d(value)):
        out[a] = (out[a] & ~np.uint8(1 << int(b))) | np.uint8(int(v) << int(b))
    return out.view(np.int8)
