"""Whole-layer wrapper of the brute-force register loop: PipeCNN's operands of every real output in MAC order
(pipecnn.md §2.3), memory faults applied to the stored images first (faults.md §6), then brute.register_loop."""
import numpy as np

from caffe_unstable.accel.faults.memory import activation_image, flip_bytes, parameter_image, split_parameter_image

from .brute import Faults, horizon_fn, output_conversion, register_loop


def operands(x, w, g):
    """x [Cin][H][W], w [O][Cg][Kh][Kw] int8 -> (xs, ws) int64 [R, L, VEC], R = O·conv_y·conv_x in (o, y, x) order."""
    stride = g["stride"] if np.isscalar(g["stride"]) else g["stride"][0]
    pad = g["pad"] if np.isscalar(g["pad"]) else g["pad"][0]
    O, cy, cx, L, VEC, Kh, Kw, Cg = (g[k] for k in ("O", "conv_y", "conv_x", "L", "VEC_SIZE", "Kh", "Kw", "Cg"))
    H, W = g["H"], g["W_in"]
    xpad = np.zeros((g["Cin"] + VEC, H + 2 * pad + Kh, W + 2 * pad + Kw), np.int64)
    xpad[:g["Cin"], pad:pad + H, pad:pad + W] = x
    o, yy, xx, t, v = np.meshgrid(np.arange(O), np.arange(cy), np.arange(cx), np.arange(L), np.arange(VEC),
                                  indexing="ij")
    grp, ky, kx = t // (Kh * Kw), (t % (Kh * Kw)) // Kw, t % Kw
    ch = grp * VEC + v
    real = ch < Cg
    c0 = (o // (O // g["group"])) * Cg
    xs = np.where(real, xpad[np.where(real, c0 + ch, 0), yy * stride + ky, xx * stride + kx], 0)
    ws = np.where(real, np.asarray(w, dtype=np.int64)[o, np.minimum(ch, Cg - 1), ky, kx], 0)
    R = O * cy * cx
    return xs.reshape(R, L, VEC), ws.reshape(R, L, VEC)


def simulate(layer, plan, widths=(32, 32, 32), n=0):
    """int8 output [O][conv_y][conv_x] of image n of a fault_vectors.json layer under a scenario plan, and hit."""
    g = dict(layer["geometry"])
    q = layer["quant"]
    x = np.asarray(layer["input"], dtype=np.int8)
    w = np.asarray(layer["weights"], dtype=np.int8)
    b = np.asarray(layer["bias"], dtype=np.int8)
    acts = [e for e in plan.get("act_events", []) if e[0] == n]
    if acts:
        img = flip_bytes(activation_image(x, g), [e[1] for e in acts], [e[2] for e in acts])
        x = img.reshape(-1, g["H"], g["W_in"])[:g["Cin"]]
    wev = [e for e in plan.get("weight_events", []) if e[0] in (n, -1)]
    if wev:
        img = flip_bytes(parameter_image(w, b, g), [e[1] for e in wev], [e[2] for e in wev])
        w, b = split_parameter_image(img, g)
    xs, ws = operands(x, w, g)
    O, cy, cx = g["O"], g["conv_y"], g["conv_x"]
    o = np.repeat(np.arange(O), cy * cx)
    lane = (o + g["po"]) % g["LANE_NUM"]
    row = lambda e: (e[1] * cy + e[2]) * cx + e[3]  # noqa: E731  (real output index = row)
    flips = {}
    for site_code, site in enumerate(("product", "accumulator", "final")):
        ev = [e for e in plan.get("mac_events", []) if e[0] == n and e[5] == site_code]
        if ev:
            flips[site] = ([row(e) for e in ev], [e[4] for e in ev], [e[6] for e in ev])
    rate = [e for e in plan.get("rate_events", []) if e[0] == n]
    stuck = plan.get("stuck", [])
    faults = Faults(flips=flips,
                    rate=([row(e) for e in rate], [e[4] for e in rate], [e[5] for e in rate]) if rate else None,
                    stuck_mult=[(s["lane"], s["vec"], s["bit"], s["value"]) for s in stuck
                                if s["site"] == "multiplier"],
                    stuck_product=[(s["lane"], s["bit"], s["value"]) for s in stuck if s["site"] == "product"],
                    stuck_acc=[(s["lane"], s["bit"], s["value"]) for s in stuck if s["site"] == "accumulator"],
                    timing=plan.get("timing"))
    horizon = None
    if plan.get("timing"):
        horizon = horizon_fn(plan["timing"], np.full(len(o), n), lane, np.arange(len(o)), g["L"], g["PIPE_DEPTH"],
                             g["VEC_SIZE"])
    S, hit = register_loop(xs, ws, g["PIPE_DEPTH"], widths, lane, faults, horizon)
    y = output_conversion(S, b[o], q["frac_w"], q["frac_din"], q["frac_dout"], q["relu"])
    return y.reshape(O, cy, cx), hit.reshape(O, cy, cx), (xs, ws, S)
