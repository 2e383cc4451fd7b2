"""Characterization vectors of `cu-characterize vectors` (faults.md §8.2): 1×1 conv layers whose every output
carries exactly one long carry chain (`carry`), or zero-input layers for soft errors (`seu`), with their expected
clean int8 outputs and a manifest `vectors.yaml`.

Every vector is an ordinary accelerator conv launch: a 1×1 convolution with Cin = VEC·L input channels (L MAC
steps), O = LANE_NUM output channels (output channel o runs on lane o, no padded lanes) over an N×H×W input, so a
simulator or a real board runs it as it runs any layer. Every output of a vector computes the same step values, so
one trial = one output, and a lane's trials are its N·H·W outputs.

A `carry` vector of chain length ℓ puts its long add on accumulator chain 0 at step t = P (PIPE_DEPTH):
* ℓ ≥ 16 (`crossing`, g = 31 − ℓ): A = −b, then m = b with b = 3·2^g (2^g where that is out of reach): the
  negative partial sum crosses to 0 and the one carry, generated at bit g, ripples through bits g+1 … 30 into
  bit 31 (faults.md §5.2). A dot product of VEC int8 pairs stays below 2^16, so a crossing always has ℓ ≥ 16.
* ℓ ≤ 15 (`run`): A = 2^ℓ − 1, then m = 1 (a chain from bit 0 into bit ℓ), then m = −2^ℓ − 1 brings the sum back
  to −1 with no carry at all (a positive sum falling to a negative one).
Every other add of the output (the first add of each chain has A = 0, later ones add 0, the final reduction adds
zeros) has no carry, so a trial errs exactly when the long add's horizon is below ℓ: p = P(K ≤ ℓ − 1), the model
`characterize.fit_carry` fits. The clean sum is −1, the bottom of its rounding bucket at output shift n = 1, so
every late outcome changes the int8 output; the generator checks this by simulating K = 0 … 31 with `ch_add` under
every sampled value and refuses a vector that keeps its output for some K < ℓ or changes it for some K ≥ ℓ.
"""
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CaffeUnstableError
from ..quant import LayerFormat, output_conversion
from .carry_horizon import W_MAX, ch_add
from .plan import SAMPLED_VALUES
from .registers import flip, wrap32

FORMAT = "caffe_unstable.characterization_vectors/1"
MANIFEST = "vectors.yaml"
FRAC = {"frac_w": 1, "frac_din": 0, "frac_dout": 0}     # n = 1: every sum change of >= 2 moves the output
BIAS = 64                                               # rb = 32: the clean output sits mid-range
X_SLOT = (-128, -128, -128, 1)                          # inputs of the first DSP block's four slots
MAX_OTHER_CHAIN = 8                                     # faults.md §8.2: no other add with a longer chain
CROSSING_MIN = 16                                       # shortest chain a one-step crossing can have (VEC 4)
DOT_MAX = 381 * 128                                     # largest |step value| dot_weights reaches either sign


# -- one output's step values -------------------------------------------------------------------------------------
def dot_weights(m):
    """Weights of the first DSP block's four slots so that Σ X_SLOT[v]·w[v] = m (int8 each)."""
    r = m % 128                             # slot 3 (x = 1) takes the remainder, slots 0-2 (x = −128) the rest
    q = -(m - r) // 128
    w = []
    for _ in range(3):
        part = max(-128, min(127, q))
        w.append(part)
        q -= part
    if q:
        raise CaffeUnstableError("vectors", f"a step value {m} is out of reach of one DSP block")
    return w + [r]


def carry_steps(ell, P):
    """(step values m_t [L], construction, step of the long add) of a carry vector of chain length ell."""
    L = 3 * P
    m = np.zeros(L, np.int64)
    if ell >= CROSSING_MIN:
        g = W_MAX - ell
        # −b + b with b = 3·2^g (2^g where 3·2^g is out of reach): one carry, generated at bit g, through bit 31.
        # The 3 makes a dropped update (`drop`) lose more than one rounding step even at g = 0.
        b = 3 << g if 3 << g <= DOT_MAX else 1 << g
        m[0], m[P] = -b, b
        # −1 on the chain before the long add: the previous accumulate result is negative, so `stale` errs as
        # well, and the clean sum −1 is the bottom of its rounding bucket, so a loss of 1 (`drop`, g = 0) shows.
        # With one chain (P = 1) the previous result is A itself, and a final +1 makes the clean sum 1 instead.
        if P > 1:
            m[P - 1] = -1
        else:
            m[2] = 1
        return m, "crossing", P
    m[0], m[P], m[2 * P] = (1 << ell) - 1, 1, -(1 << ell) - 1
    return m, "run", P


# -- the register loop of one output under a uniform horizon (faults.md §1.2 steps 2, 4, 8) ----------------------
def simulate_sums(m, P, K, sampled_value="carry_dropped", sites=("accumulate",), final_slack=0, tree_slack=0,
                  vec=4):
    """Final sums S (int64 [len(K)]) of an output whose step t has first DSP block m[t] and zero further blocks,
    every add of `sites` under horizon K (the slacks added for final_reduce / adder_tree)."""
    K = np.asarray(K, np.int64)
    A = np.zeros((P, K.size), np.int64)
    prev = np.zeros(K.size, np.int64)
    k_tree = np.clip(K + tree_slack, 0, W_MAX)
    for t, mt in enumerate(m):
        r = t % P
        mt = np.full(K.size, mt, np.int64)
        for _ in range(vec // 4 - 1):       # m <- m + D_i, D_i = 0
            if "adder_tree" in sites:
                mt = ch_add(mt, 0, k_tree)[0]
        if "accumulate" in sites:
            s = ch_add(A[r], mt, K, 32, sampled_value, prev)[0]
        else:
            s = wrap32(A[r] + mt)
        A[r] = prev = s
    L = len(m)
    S = A[(L - 1) % P].copy()
    k_final = np.clip(K + final_slack, 0, W_MAX)
    for i in range(1, P):
        u = A[(L - 1 - i) % P] if L - 1 - i >= 0 else np.zeros(K.size, np.int64)
        S = ch_add(S, u, k_final)[0] if "final_reduce" in sites else wrap32(S + u)
    return S


def chain_lengths(m, P):
    """Longest carry chain of every accumulate add of the clean loop (0 = no carry), in step order."""
    A = np.zeros(P, np.int64)
    out = []
    ks = np.arange(W_MAX + 1)
    for t, mt in enumerate(m):
        r = t % P
        _, late = ch_add(np.full(ks.size, A[r]), np.full(ks.size, mt), ks)
        out.append(int((np.asarray(late) != 0).sum()))       # late at K iff K < the chain's length
        A[r] = wrap32(A[r] + mt)
    return out


def _convert(S):
    fmt = LayerFormat(**FRAC)
    return output_conversion(S, BIAS, fmt.n, fmt.m).astype(np.int64)


def check_carry(m, ell, P, timing, vec):
    """Refuse a carry vector unless its one long add has chain ell, every other add a chain <= 8, and the output
    changes for every K < ell and for no K >= ell, under every sampled value (faults.md §8.2)."""
    chains = chain_lengths(m, P)
    long = [t for t, c in enumerate(chains) if c == ell]
    others = [c for t, c in enumerate(chains) if t not in long[:1]]
    if len(long) != 1 or max(others, default=0) > MAX_OTHER_CHAIN:
        raise CaffeUnstableError("vectors", f"carry vector of chain length {ell}: chains {chains} (want one of "
                                            f"length {ell} and none longer than {MAX_OTHER_CHAIN})")
    ks = np.arange(W_MAX + 1)
    clean = _convert(simulate_sums(m, P, [W_MAX]))[0]
    for mode in SAMPLED_VALUES:
        y = _convert(simulate_sums(m, P, ks, mode, timing["sites"], timing["final_slack_bits"],
                                   timing["tree_slack_bits"], vec))
        bad = [int(k) for k in ks if (y[k] != clean) != (k < ell)]
        if bad:
            raise CaffeUnstableError("vectors", f"carry vector of chain length {ell} ({mode}): the output "
                                                f"{'does not change' if bad[0] < ell else 'changes'} at K = {bad[0]}")
    return clean, max(others, default=0)


def seu_visible_fraction(m, P, bits, width):
    """V: the fraction of flip bits in [lo, hi] of a `width`-bit register (the accumulator, or the product m_t)
    whose one flip changes the output of an all-zero layer: every partial sum is 0, so a flip at any step adds
    ±2^b to the final sum."""
    clean = _convert(simulate_sums(m, P, [W_MAX]))[0]
    lo, hi = bits
    seen = 0
    for b in range(lo, hi + 1):
        S = int(flip(np.int64(0), b, width))   # A_(L−1) = ±2^b, then added to the zero chains
        seen += int(_convert(np.array([S]))[0] != clean)
    return seen / (hi - lo + 1), clean


# -- whole vectors ------------------------------------------------------------------------------------------------
@dataclass
class Vector:
    meta: dict            # the manifest entry
    input: np.ndarray     # int8 (N, Cin, H, W)
    weights: np.ndarray   # int8 (O, Cin, 1, 1)
    bias: np.ndarray      # int8 (O,)
    expected: np.ndarray  # int8 (N, O, H, W)


def _layer(steps, w_steps, acc, images, size, x_slot):
    """input, weights and bias of a 1×1 conv whose step t multiplies x_slot by w_steps[t] in every output."""
    vec, lanes = acc["vec_size"], acc["lane_num"]
    L = len(steps)
    x_pattern = np.zeros(vec, np.int8)
    x_pattern[:4] = x_slot
    x = np.broadcast_to(np.tile(x_pattern, L)[None, :, None, None], (images, L * vec, size, size)).copy()
    w_pattern = np.zeros((L, vec), np.int8)
    w_pattern[:, :4] = w_steps
    w = np.broadcast_to(w_pattern.reshape(1, L * vec, 1, 1), (lanes, L * vec, 1, 1)).copy()
    return x, w, np.full(lanes, BIAS, np.int8)


def _meta(name, cls, acc, images, size, L, extra):
    geometry = {"N": images, "C": L * acc["vec_size"], "H": size, "W": size, "O": acc["lane_num"], "Kh": 1, "Kw": 1,
                "stride": 1, "pad": 0, "group": 1, "L": L}
    meta = {"name": name, "file": f"{name}.npz", "sha256": None, "vector_class": cls, "chain_len": None,
            "lane": None, "geometry": geometry, "frac": dict(FRAC), "relu": False, "bias": True,
            "M": L * acc["vec_size"], "V": None, "trials_per_lane": images * size * size}
    meta.update(extra)
    return meta


def _expected(x, w, b, meta, clean):
    """The clean output by the plain NumPy reference conv, checked against the register loop's value."""
    from ..geometry import ConvGeometry
    from ..reference import conv_reference
    g = meta["geometry"]
    geom = ConvGeometry(g["N"], g["C"], g["H"], g["W"], g["O"], 1, 1, 1, 1, 1, 0, 0)
    out = conv_reference(x, w, b, geom, LayerFormat(**FRAC))
    if not (out == clean).all():
        raise CaffeUnstableError("vectors", f"{meta['name']}: the reference conv gives {np.unique(out)}, the "
                                            f"register loop {clean}")
    return out


def carry_vector(ell, acc, timing, images=1, size=4):
    """The `carry` vector of chain length ell (1 … 31) for an accelerator build `acc` (profile.accelerator)."""
    if not 1 <= ell <= W_MAX:
        raise CaffeUnstableError("--chain-lens", f"chain lengths must be in [1, 31], got {ell}")
    P = acc["pipe_depth"]
    m, construction, t_long = carry_steps(ell, P)
    clean, other = check_carry(m, ell, P, timing, acc["vec_size"])
    x, w, b = _layer(m, [dot_weights(int(v)) for v in m], acc, images, size, X_SLOT)
    meta = _meta(f"carry_l{ell:02d}", "carry", acc, images, size, len(m),
                 {"chain_len": ell, "construction": construction, "long_add_step": t_long,
                  "max_other_chain": other, "expected_output": int(clean)})
    return Vector(meta, x, w, b, _expected(x, w, b, meta, clean))


def seu_vector(steps, acc, soft, images=1, size=4, seed=0):
    """A `seu` vector: L = steps MAC steps of zero inputs times random weights; M = L·VEC, V by simulation."""
    P = acc["pipe_depth"]
    width = acc["width_accumulator" if soft["site"] == "accumulator" else "width_product"]
    V, clean = seu_visible_fraction(np.zeros(steps, np.int64), P, soft["flip_bits"], width)
    rng = np.random.default_rng(seed)
    x, _, b = _layer(np.zeros(steps, np.int64), np.zeros((steps, 4), np.int64), acc, images, size, (0, 0, 0, 0))
    w = rng.integers(-128, 128, size=(acc["lane_num"], steps * acc["vec_size"], 1, 1)).astype(np.int8)
    meta = _meta(f"seu_L{steps}", "seu", acc, images, size, steps,
                 {"V": V, "site": soft["site"], "flip_bits": list(soft["flip_bits"]), "expected_output": int(clean)})
    return Vector(meta, x, w, b, _expected(x, w, b, meta, clean))


# -- files --------------------------------------------------------------------------------------------------------
def save(vectors, out_dir, profile, tool):
    """Write every vector as DIR/<name>.npz and the manifest DIR/vectors.yaml (atomically, manifest last)."""
    import yaml
    from ...io.atomic import write_bytes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for v in vectors:
        buf = io.BytesIO()
        np.savez_compressed(buf, input=v.input, weights=v.weights, bias=v.bias, expected=v.expected)
        payload = buf.getvalue()
        v.meta["sha256"] = hashlib.sha256(payload).hexdigest()
        write_bytes(out_dir / v.meta["file"], payload)
    acc = profile.accelerator
    manifest = {"format": FORMAT, "created_with": tool,
                "profile": {"name": profile.name, "sha256": profile.sha256},
                "accelerator": {k: acc[k] for k in ("name", "vec_size", "lane_num", "pipe_depth", "width_product",
                                                    "width_accumulator", "width_final")},
                "checked_sampled_values": list(SAMPLED_VALUES),
                "vectors": [v.meta for v in vectors]}
    text = yaml.safe_dump(manifest, sort_keys=False, width=110, default_flow_style=None)
    write_bytes(out_dir / MANIFEST, text.encode("utf-8"))
    return out_dir / MANIFEST


def load_manifest(vectors_dir):
    """The manifest of a vectors folder (format checked)."""
    import yaml
    path = Path(vectors_dir) / MANIFEST
    if not path.is_file():
        raise CaffeUnstableError(str(vectors_dir), f"no {MANIFEST} here (write one with cu-characterize vectors)")
    manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise CaffeUnstableError(str(path), f"format: expected {FORMAT!r}, got {got!r}")
    return manifest


def load_vector(vectors_dir, meta):
    """One vector's arrays, after checking its file against the manifest's sha256."""
    path = Path(vectors_dir) / meta["file"]
    payload = path.read_bytes()
    if meta.get("sha256") and hashlib.sha256(payload).hexdigest() != meta["sha256"]:
        raise CaffeUnstableError(str(path), "sha256 differs from the manifest's (the file was changed)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return Vector(meta, z["input"], z["weights"], z["bias"], z["expected"])
