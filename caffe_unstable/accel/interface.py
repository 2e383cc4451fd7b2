"""The paper's seven-function accelerator interface (pipecnn.md §10.2) and the hardware build parameters (§10.1).

Every backend (numba, later opencl) implements `Backend`; the float path implements none (plain Caffe). The
functions see NumPy arrays and geometry objects only (`accel.geometry`), never a Blob, Layer or Net.

    float_to_fixed(x, frac, bits=8)        float array -> int8 q = clamp(round_half_away(x 2^frac))  (§10.4)
    fixed_to_float(q, frac)                int8 -> float32 q 2^-frac, exact
    data_layout_reorder(q, kind, geom)     Caffe NCHW/OIHW int8 -> the backend's device layout (PipeCNN's, §4)
    data_layout_recover(dev, kind, geom)   device layout -> NCHW int8 (the inverse; padding dropped)
    data_to_fpga(slot, **buffers)          place device buffers (weights, bias, input) in the accelerator memory
    launch_accelerator(launch)             configure + run one layer or a fused conv -> ReLU -> pool -> LRN group
    data_from_fpga(slot)                   every stage output of the slot's last launch (the write-back path)
"""
import abc
from dataclasses import dataclass, field, fields

from ..errors import CaffeUnstableError

LRN_OVERFLOW_MODES = ("clamp", "wrap")


@dataclass(frozen=True)
class HwConfig:
    """PipeCNN build parameters; the defaults are the paper's KCU1500 build (pipecnn.md §10.1).

    Clean outputs depend on none of them except `lrn_overflow`: VEC/LANE/PIPE_DEPTH and the register widths only
    decide which register a fault hits (§2.8, §10.9).
    """

    vec_size: int = 4               # VEC_SIZE: input channels per MAC step (multiple of 4: 4-product DSP blocks)
    lane_num: int = 16              # LANE_NUM: output channels computed in parallel
    pipe_depth: int = 6             # PIPE_DEPTH: interleaved accumulators per lane
    width_product: int = 32         # register widths of m_t, A_t, S (faults.md §1.1): fault bits only
    width_accumulator: int = 32
    width_final: int = 32
    lrn_overflow: str = "clamp"     # UP-2018 Xilinx clamps LRN outputs above 127; "wrap" is UP Intel / PoCL

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "lrn_overflow":
                if value not in LRN_OVERFLOW_MODES:
                    raise CaffeUnstableError("lrn_overflow", f"must be one of {', '.join(LRN_OVERFLOW_MODES)}, "
                                                             f"got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool):
                raise CaffeUnstableError(f.name, f"must be an integer, got {value!r}")
        if self.vec_size < 4 or self.vec_size % 4:
            raise CaffeUnstableError("vec_size", f"must be a multiple of 4 and >= 4 (4-product DSP blocks), "
                                                 f"got {self.vec_size}")
        if self.lane_num < 1:
            raise CaffeUnstableError("lane_num", f"must be >= 1, got {self.lane_num}")
        if self.pipe_depth < 1:
            raise CaffeUnstableError("pipe_depth", f"must be >= 1, got {self.pipe_depth}")
        lo = 16 + (self.vec_size - 1).bit_length()
        if not lo <= self.width_product <= 32:
            raise CaffeUnstableError("width_product", f"must be in [{lo}, 32] for vec_size {self.vec_size}, "
                                                      f"got {self.width_product}")
        for name in ("width_accumulator", "width_final"):
            if not 1 <= getattr(self, name) <= 32:
                raise CaffeUnstableError(name, f"must be in [1, 32], got {getattr(self, name)}")

    @classmethod
    def keys(cls):
        return tuple(f.name for f in fields(cls))


@dataclass
class Launch:
    """One accelerator launch: a conv (with fused ReLU) and/or a max pool and/or an LRN, in that order.

    `slot` names the buffers (data_to_fpga / data_from_fpga). The first stage reads the slot's `input` buffer; each
    later stage reads the previous stage's output. `plan` is the conv stage's `faults.plan.LayerPlan` for this
    launch's images (faults.md §2.2: MAC flips, timing, rate events, memory flips, stuck-at; None = clean);
    `events` is the older shorthand for a plan holding MAC-flip records only. `path`: "fast" (exact GEMM, with
    §4.4 corrections where they are exact), "mac" (the register-level MAC-order loop of faults.md §1.2) or "auto"
    (the fastest exact one for the plan). The backend reports what the faults did in `stats` (faults.md §10.4
    `--fault-log` fields: mac_flips, masked, outputs_changed, outputs_saturated, rate_events, late_adds,
    outputs_hit, weight_flips, act_flips, stuck_outputs_changed).
    """

    slot: str
    conv: object = None             # geometry.ConvStage
    pool: object = None             # geometry.PoolStage
    lrn: object = None              # geometry.LrnStage
    events: object = None           # geometry.MAC_EVENT_DTYPE records or None (shorthand for a MAC-flip-only plan)
    plan: object = None             # faults.plan.LayerPlan or None
    path: str = "auto"
    sums_hook: object = None        # fast path only: hook(group j, n0, n1, S) may edit the clean int32 sums S
                                    # (int64 array ((n1 - n0) Ho Wo, Og), rows = image-major output positions)
                                    # before the output conversion (faults.md §4.4 corrections plug in here)
    clean_saturation: bool = False  # conv stage: report stats["clean_saturated"], bool (N, O, Ho, Wo): where the
                                    # fault-free sum's r1 lies outside [-128, 127] (faults.md §10.2's STE cut)
    stats: dict = field(default_factory=dict)   # filled by the backend (e.g. {"path": "fast"})

    def stages(self):
        return [(name, s) for name, s in (("conv", self.conv), ("pool", self.pool), ("lrn", self.lrn)) if s]


class Backend(abc.ABC):
    """The seven functions of the paper's interface; one instance per accelerator (holds its device memory)."""

    name = ""

    def __init__(self, hw):
        self.hw = hw

    def supports(self, op):
        """Whether this backend runs `op` ("conv", "pool", "lrn")."""
        return op in ("conv", "pool", "lrn")

    @abc.abstractmethod
    def float_to_fixed(self, x, frac, bits=8):
        """Every backend implements float_to_fixed (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def fixed_to_float(self, q, frac, out=None):
        """Every backend implements fixed_to_float (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def data_layout_reorder(self, q, kind, geom):
        """Every backend implements data_layout_reorder (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def data_layout_recover(self, dev, kind, geom):
        """Every backend implements data_layout_recover (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def data_to_fpga(self, slot, **buffers):
        """Every backend implements data_to_fpga (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def launch_accelerator(self, launch):
        """Every backend implements launch_accelerator (pipecnn.md §10.2)."""

    @abc.abstractmethod
    def data_from_fpga(self, slot):
        """Every backend implements data_from_fpga (pipecnn.md §10.2)."""
