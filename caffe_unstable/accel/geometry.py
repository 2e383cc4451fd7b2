"""Layer geometry as the accelerator sees it: PipeCNN's conv/FC, max-pool and LRN stages (pipecnn.md §2-§3, §10.6-
§10.9; faults.md §1.1 for the symbols), plus the MAC-register fault records a conv launch may carry.

Conv symbols: Cg = C/group input channels per group, Cp = Cg rounded up to VEC, L = Kh Kw Cp/VEC MAC steps per
output, Op = O rounded up to LANE with po = (Op - O) // 2 zero filters before the real ones, padded channel
o' = o + po, lane = o' mod LANE, lane group z = o' div LANE. An FC layer over a (N, C, H, W) bottom is the conv
with kernel (H, W) and stride (H, W) (§10.6).
"""
from dataclasses import dataclass

import numpy as np

from ..errors import CaffeUnstableError


def _ceil_to(a, b):
    return -(-a // b) * b


def conv_out_dim(size, kernel, stride, pad):
    """Caffe's (size + 2 pad - kernel) / stride + 1 with C's truncating division."""
    num = size + 2 * pad - kernel
    return (num // stride if num >= 0 else -((-num) // stride)) + 1


@dataclass(frozen=True)
class ConvGeometry:
    N: int
    C: int
    H: int
    W: int
    O: int
    group: int
    Kh: int
    Kw: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    vec: int = 4
    lane: int = 16
    pipe: int = 6

    def __post_init__(self):
        for name in ("N", "C", "H", "W", "O", "group", "Kh", "Kw", "stride_h", "stride_w", "vec", "lane", "pipe"):
            if getattr(self, name) < 1:
                raise CaffeUnstableError("geometry", f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_h < 0 or self.pad_w < 0:
            raise CaffeUnstableError("geometry", f"padding must be >= 0, got ({self.pad_h}, {self.pad_w})")
        if self.C % self.group or self.O % self.group:
            raise CaffeUnstableError("geometry", f"group {self.group} must divide C = {self.C} and O = {self.O}")
        if self.Ho < 1 or self.Wo < 1:
            raise CaffeUnstableError("geometry", f"output size {self.Ho}x{self.Wo} from a {self.H}x{self.W} input")

    # -- derived (faults.md §1.1) -------------------------------------------------------------------------
    @property
    def Cg(self):
        return self.C // self.group

    @property
    def Og(self):
        return self.O // self.group

    @property
    def Cp(self):
        return _ceil_to(self.Cg, self.vec)

    @property
    def Cb(self):
        """Channel-vector groups per conv group (Cp / VEC)."""
        return self.Cp // self.vec

    @property
    def L(self):
        return self.Kh * self.Kw * self.Cb

    @property
    def Op(self):
        return _ceil_to(self.O, self.lane)

    @property
    def po(self):
        return (self.Op - self.O) // 2

    @property
    def Z(self):
        """Lane groups (Op / LANE)."""
        return self.Op // self.lane

    @property
    def Ho(self):
        return conv_out_dim(self.H, self.Kh, self.stride_h, self.pad_h)

    @property
    def Wo(self):
        return conv_out_dim(self.W, self.Kw, self.stride_w, self.pad_w)

    conv_y = Ho
    conv_x = Wo

    @property
    def K(self):
        """Real products per output (Cg Kh Kw): the GEMM depth."""
        return self.Cg * self.Kh * self.Kw

    @property
    def Ob(self):
        """Channel-vector blocks of the output activations (ceil(O / VEC))."""
        return -(-self.O // self.vec)

    @property
    def n_mac(self):
        """N_MAC per image (hardware count: padded lanes and channels included)."""
        return self.Op * self.Ho * self.Wo * self.L * self.vec

    def step(self, t):
        """MAC step t -> (channel-vector group g, ky, kx), kx fastest (pipecnn.md §2.3)."""
        kk = self.Kh * self.Kw
        return t // kk, (t % kk) // self.Kw, t % self.Kw


def fc_geometry(N, C, H, W, O, vec=4, lane=16, pipe=6):
    """InnerProduct over a (N, C, H, W) bottom as PipeCNN runs it: a conv with kernel (H, W), stride (H, W)."""
    return ConvGeometry(N, C, H, W, O, 1, H, W, H, W, 0, 0, vec, lane, pipe)


@dataclass(frozen=True)
class ConvStage:
    geom: ConvGeometry
    fmt: object            # quant.LayerFormat
    relu: bool = False
    has_bias: bool = True


def caffe_pool_out(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled size: ceil((size + 2 pad - kernel) / stride) + 1, less one when pad > 0 and the last window
    would start at or beyond size + pad (pipecnn.md §10.8)."""
    num = size + 2 * pad - kernel
    out = (-(-num // stride) if ceil_mode else num // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolStage:
    """Max pooling over (N, C, H, W) int8 maps; output (N, C, Ho, Wo), windows clipped to the input."""

    N: int
    C: int
    H: int
    W: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int = 0
    pad_w: int = 0
    Ho: int = 0
    Wo: int = 0

    def __post_init__(self):
        if not self.Ho:
            object.__setattr__(self, "Ho", caffe_pool_out(self.H, self.kernel_h, self.stride_h, self.pad_h))
        if not self.Wo:
            object.__setattr__(self, "Wo", caffe_pool_out(self.W, self.kernel_w, self.stride_w, self.pad_w))
        for size, k, s, p, o in ((self.H, self.kernel_h, self.stride_h, self.pad_h, self.Ho),
                                 (self.W, self.kernel_w, self.stride_w, self.pad_w, self.Wo)):
            if k < 1 or s < 1 or p < 0 or o < 1:
                raise CaffeUnstableError("geometry", f"bad max-pool window: kernel {k}, stride {s}, pad {p}, "
                                                     f"output {o}")
            if (o - 1) * s - p >= size or p >= k:
                raise CaffeUnstableError("geometry", f"max-pool window {o - 1} lies outside the {size}-wide "
                                                     f"input (kernel {k}, stride {s}, pad {p})")


@dataclass(frozen=True)
class LrnStage:
    """PipeCNN's LRN (local_size 5, alpha 1e-4, beta 0.75, k 1, across channels) on (N, C, H, W) int8 with input
    fraction `frac_in` in [-8, 0]; the output has fraction 0 (pipecnn.md §3.5, §10.7)."""

    N: int
    C: int
    H: int
    W: int
    frac_in: int

    def __post_init__(self):
        if not -8 <= self.frac_in <= 0:
            raise CaffeUnstableError("geometry", f"LRN input fraction must be in [-8, 0], got {self.frac_in}")


# -- MAC-register fault records (faults.md §2.2): the conv launch's `events` ------------------------------------
SITE_PRODUCT, SITE_ACCUMULATOR, SITE_FINAL = 0, 1, 2
SITES = {"product": SITE_PRODUCT, "accumulator": SITE_ACCUMULATOR, "final": SITE_FINAL}
MAC_EVENT_DTYPE = np.dtype([("n", "<i4"), ("o", "<i4"), ("y", "<i4"), ("x", "<i4"), ("t", "<i4"),
                            ("site", "<i1"), ("bit", "<i1")])


def mac_events(records=()):
    """A sorted MAC_EVENT_DTYPE array from (n, o, y, x, t, site, bit) tuples (site: code or name)."""
    rows = [tuple(r[:5]) + (SITES.get(r[5], r[5]) if isinstance(r[5], str) else r[5], r[6]) for r in records]
    ev = np.array(rows, MAC_EVENT_DTYPE) if rows else np.zeros(0, MAC_EVENT_DTYPE)
    return np.sort(ev, order=list(MAC_EVENT_DTYPE.names), kind="stable")


def check_events(ev, geom, hw):
    """Validate records against the layer (faults.md §2.3): one line naming the bad field."""
    if ev.dtype != MAC_EVENT_DTYPE:
        raise CaffeUnstableError("fault plan", f"MAC events must have dtype {MAC_EVENT_DTYPE}, got {ev.dtype}")
    limits = {"n": geom.N, "o": geom.O, "y": geom.Ho, "x": geom.Wo, "t": geom.L}
    for name, hi in limits.items():
        col = ev[name]
        if len(col) and (col.min() < 0 or col.max() >= hi):
            raise CaffeUnstableError("fault plan", f"field {name} out of range [0, {hi}) for this layer")
    widths = np.array([hw.width_product, hw.width_accumulator, hw.width_final])
    if len(ev):
        if ev["site"].min() < 0 or ev["site"].max() > 2:
            raise CaffeUnstableError("fault plan", "site must be 0 (product), 1 (accumulator) or 2 (final)")
        if (ev["bit"] < 0).any() or (ev["bit"] >= widths[ev["site"]]).any():
            raise CaffeUnstableError("fault plan", "bit out of range for its site's register width")
