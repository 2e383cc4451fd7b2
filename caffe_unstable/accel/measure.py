"""`cu-characterize measure`: run the characterization vectors (faults/char_vectors.py) as ordinary conv launches
on an accelerator backend and count, per vector, lane and repeat, the outputs that differ from the expected clean
ones bit for bit (faults.md §8.2 count rows).

On a board the clock is set with the platform's tools and the achieved `mhz` is only recorded; on a simulator the
fault models of a profile at a clock produce the faults (synthetic measurements). Vector i, repeat k draws its
plan from the key (phase 0, iteration 0, pass k, layer i), so vectors and repeats are independent draws.
"""
import numpy as np

from ..errors import CaffeUnstableError
from .faults import char_vectors
from .geometry import ConvGeometry, ConvStage
from .interface import HwConfig, Launch
from .quant import LayerFormat

BUILD_KEYS = ("vec_size", "lane_num", "pipe_depth", "width_product", "width_accumulator", "width_final")


def hw_config(manifest):
    """The accelerator build the vectors were made for."""
    return HwConfig(**{k: manifest["accelerator"][k] for k in BUILD_KEYS})


def check_build(manifest, profile, where):
    """Refuse a profile whose accelerator build differs from the vectors' (their lanes and steps would not match)."""
    made = manifest["accelerator"]
    acc = profile.accelerator
    diff = [k for k in BUILD_KEYS if acc[k] != made[k]]
    if diff:
        raise CaffeUnstableError(where, f"the vectors were made for {diff[0]} = {made[diff[0]]}, the profile "
                                        f"{profile.name} has {acc[diff[0]]}: write vectors for this profile")


def conv_geometry(meta, hw):
    g = meta["geometry"]
    return ConvGeometry(g["N"], g["C"], g["H"], g["W"], g["O"], g["group"], g["Kh"], g["Kw"], g["stride"],
                        g["stride"], g["pad"], g["pad"], hw.vec_size, hw.lane_num, hw.pipe_depth)


class BackendRunner:
    """One vector as one conv launch through the paper's seven functions, in the host order of accel/session.py:
    float_to_fixed -> data_layout_reorder -> data_to_fpga -> launch_accelerator -> data_from_fpga -> recover."""

    def __init__(self, backend, hw):
        from .backends import backend_class
        self.backend = backend_class(backend)(hw)

    def __call__(self, vector, geom, fmt, plan):
        be = self.backend
        slot = vector.meta["name"]
        x = be.float_to_fixed(be.fixed_to_float(vector.input, fmt.frac_din), fmt.frac_din)    # exact round trip
        w = be.float_to_fixed(be.fixed_to_float(vector.weights, fmt.frac_w), fmt.frac_w)
        be.data_to_fpga(slot, input=be.data_layout_reorder(x, "input", geom),
                        weights=be.data_layout_reorder(w, "weights", geom),
                        bias=be.data_layout_reorder(vector.bias, "bias", geom))
        be.launch_accelerator(Launch(slot, conv=ConvStage(geom, fmt, relu=False, has_bias=True), plan=plan))
        return be.data_layout_recover(be.data_from_fpga(slot)["conv"], "activations", geom, channels=geom.O)


def vector_plan(models, index, meta, geom, hw, key):
    """The LayerPlan of vector `index` for one pass key (None = clean)."""
    from .faults import geometry_from, sample_plan
    if not models:
        return None
    geometry = geometry_from(geom, (hw.width_product, hw.width_accumulator, hw.width_final))
    plan = sample_plan(models, [(index, meta["name"], geometry)], geom.N, key)
    return plan.layer(index)


def measure(vectors_dir, runner, mhz, models=(), seed=0, repeat=1, manifest=None):
    """Count rows (dicts with the §8.2 columns) of every vector of `vectors_dir`, `repeat` times.

    runner(vector, geom, fmt, plan) -> int8 (N, O, H, W): a BackendRunner or any simulator with that signature.
    models: the fault models to sample plans from (faults.models_for); seed: their seed.
    """
    from .faults import PassKey
    manifest = manifest or char_vectors.load_manifest(vectors_dir)
    hw = hw_config(manifest)
    rows = []
    for index, meta in enumerate(manifest["vectors"]):
        vector = char_vectors.load_vector(vectors_dir, meta)
        geom = conv_geometry(meta, hw)
        fmt = LayerFormat(**meta["frac"])
        lanes = (np.arange(geom.O) + geom.po) % hw.lane_num
        for k in range(repeat):
            plan = vector_plan(models, index, meta, geom, hw, PassKey(seed, 0, 0, k))
            out = np.asarray(runner(vector, geom, fmt, plan))
            if out.shape != vector.expected.shape:
                raise CaffeUnstableError(meta["name"], f"the accelerator returned shape {out.shape}, expected "
                                                       f"{vector.expected.shape}")
            wrong = (out != vector.expected).sum(axis=(0, 2, 3))          # per output channel
            trials = geom.N * geom.Ho * geom.Wo
            for lane in range(hw.lane_num):
                chans = lanes == lane
                if not chans.any():
                    continue
                seu = meta["vector_class"] == "seu"
                rows.append({"mhz": mhz, "vector_class": meta["vector_class"], "chain_len": meta["chain_len"],
                             "lane": lane, "trials": int(trials * chans.sum()), "errors": int(wrong[chans].sum()),
                             "macs_per_trial": meta["M"] if seu else None,
                             "visible_fraction": meta["V"] if seu else None, "repeat": k})
    return rows


def summary(rows):
    """{vector_class: (rows, errors, trials)} of measured rows."""
    out = {}
    for r in rows:
        n, e, t = out.get(r["vector_class"], (0, 0, 0))
        out[r["vector_class"]] = (n + 1, e + r["errors"], t + r["trials"])
    return out
