"""An opened accelerator: one backend, its build parameters and the quantisation table, driven through the
seven-function interface in the paper's host order (pipecnn.md §6.2, §10.2):

    float_to_fixed -> data_layout_reorder -> data_to_fpga -> launch_accelerator -> data_from_fpga
                   -> data_layout_recover -> fixed_to_float

It works on arrays and geometry only (net/accel_bridge.py maps Caffe layers onto it). Weights are re-quantised and
re-sent only when their quantised values changed since the last upload (a solver update, copy_from, a new frac_w):
the same as re-quantising them before every forward, as ICT did (§10.4), at the cost of one read of the weights.
"""
import numpy as np

from .geometry import ConvStage
from .interface import Launch

PATHS = ("auto", "fast", "mac")


class Accelerator:
    """`caffe_unstable.accel.open(...)`'s result; pass it as `caffe.Net(..., accel=acc)`.

    Attributes: `backend` (a interface.Backend), `hw` (HwConfig), `quant` (QuantTable or None; replace it freely),
    `seed`, `path` ("auto": the fast exact path unless a layer has MAC fault records, "fast", "mac": always the
    register-level MAC-order loop), `fixed_events` (layer name -> geometry.MAC_EVENT_DTYPE records replayed on every
    forward: the explicit-plan hook faults build on), `last_stats` (layer name -> {"path", "mac_flips"}).
    """

    def __init__(self, backend, quant=None, seed=None, profile=None, freq_mhz=None, ser=None):
        self.backend = backend
        self.hw = backend.hw
        self.quant = quant
        self.seed = seed
        self.profile = profile
        self.freq_mhz = freq_mhz
        self.ser = ser
        self.path = "auto"
        self.fixed_events = {}
        self.last_stats = {}
        self._uploaded = {}          # slot -> (int8 weights, int8 bias or None, format/shape key) on the device

    @property
    def name(self):
        return self.backend.name

    def __repr__(self):
        return (f"<caffe_unstable accelerator {self.name}: VEC_SIZE {self.hw.vec_size}, LANE_NUM {self.hw.lane_num}, "
                f"PIPE_DEPTH {self.hw.pipe_depth}, lrn_overflow {self.hw.lrn_overflow}>")

    def events_for(self, layer_name):
        """The MAC fault records of this forward for a layer (None = clean)."""
        return self.fixed_events.get(layer_name)

    # -- one layer each (the bridge's calls) ------------------------------------------------------------------
    def conv(self, slot, x, w, b, geom, fmt, relu, out):
        """Conv/FC: float32 x (N, C, H, W), float32 weights (O, Cg, Kh, Kw) and bias (O,) or None -> float32
        out (N, O, Ho, Wo) = q 2^-frac_dout. Returns the Launch (its stats)."""
        be = self.backend
        self._upload_weights(slot, w, b, geom, fmt)
        if hasattr(be, "input_from_float"):
            xdev = be.input_from_float(x, fmt.frac_din, geom)
        else:
            xdev = be.data_layout_reorder(be.float_to_fixed(x, fmt.frac_din), "input", geom)
        be.data_to_fpga(slot, input=xdev)
        events = self.events_for(slot)
        path = self.path if self.path in PATHS else "auto"
        launch = be.launch_accelerator(Launch(slot, conv=ConvStage(geom, fmt, relu, b is not None),
                                              events=events, path=path))
        self._read_back(slot, "conv", geom.O, fmt.frac_dout, out)
        self.last_stats[slot] = {"path": launch.stats.get("path"),
                                 "mac_flips": 0 if events is None else int(len(events))}
        return launch

    def pool(self, slot, x, frac, stage, out):
        """Max pooling of float32 x holding q 2^-frac (or any float: it is quantised at frac) -> out, same frac."""
        self._send_activations(slot, x, frac)
        self.backend.launch_accelerator(Launch(slot, pool=stage))
        self._read_back(slot, "pool", stage.C, frac, out)

    def lrn(self, slot, x, stage, out):
        """PipeCNN's LRN of float32 x holding q 2^-stage.frac_in -> out holding integers (fraction 0)."""
        self._send_activations(slot, x, stage.frac_in)
        self.backend.launch_accelerator(Launch(slot, lrn=stage))
        self._read_back(slot, "lrn", stage.C, 0, out)

    # -- host side of the interface ---------------------------------------------------------------------------
    def _upload_weights(self, slot, w, b, geom, fmt):
        """float_to_fixed -> data_layout_reorder -> data_to_fpga for the weights and bias, unless their quantised
        values are those already on the device (checked in one pass over the float weights)."""
        key = (fmt.frac_w, fmt.w_bits, geom.vec, geom.lane, geom.O, geom.group, w.shape, b is None)
        done = self._uploaded.get(slot)
        be = self.backend
        if done is not None and done[2] == key and self._quantizes_to(w, done[0], fmt) and (
                b is None or self._quantizes_to(b, done[1], fmt)):
            return
        wq = be.float_to_fixed(w, fmt.frac_w, fmt.w_bits)
        buffers = {"weights": be.data_layout_reorder(wq, "weights", geom)}
        bq = None
        if b is not None:
            bq = be.float_to_fixed(b, fmt.frac_w, fmt.w_bits)    # the bias shares the weights' format (§1.2)
            buffers["bias"] = be.data_layout_reorder(bq, "bias", geom)
        be.data_to_fpga(slot, **buffers)
        self._uploaded[slot] = (wq, bq, key)

    def _quantizes_to(self, x, q, fmt):
        be = self.backend
        if hasattr(be, "quantizes_to"):
            return be.quantizes_to(x, q, fmt.frac_w, fmt.w_bits)
        return np.array_equal(be.float_to_fixed(x, fmt.frac_w, fmt.w_bits), q)

    def _send_activations(self, slot, x, frac):
        be = self.backend
        if hasattr(be, "activations_from_float"):
            dev = be.activations_from_float(x, frac)
        else:
            dev = be.data_layout_reorder(be.float_to_fixed(x, frac), "activations")
        be.data_to_fpga(slot, input=dev)

    def _read_back(self, slot, stage, channels, frac, out):
        be = self.backend
        dev = be.data_from_fpga(slot)[stage]
        out4 = out.reshape(out.shape[0], channels, -1, out.shape[-1]) if out.ndim == 4 else \
            out.reshape(out.shape[0], channels, 1, 1)
        if hasattr(be, "float_from_activations"):
            be.float_from_activations(dev, frac, out4)
        else:
            q = be.data_layout_recover(dev, "activations", channels=channels)
            out4[...] = be.fixed_to_float(q, frac)

