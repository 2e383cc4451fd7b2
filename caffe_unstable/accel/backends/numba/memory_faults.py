"""Memory upsets and stuck memory bits on copies of the device buffers (faults.md §6.1-§6.3).

Plans name bytes of PipeCNN's logical images: the parameter image (padded weights [Op][Cp][Kh][Kw], then the
padded bias [Op]) and the input-activation image ([Cip][H][W], Cip = ceil(Cin/VEC)·VEC). Here each address is
mapped to its byte in the backend's device layouts (accel/layouts.py); bytes in padding (channels >= Cg or Cin,
filters outside [po, po + O)) are real chances with no visible effect, so they are dropped. Transient flips XOR
the byte (a bit flipped twice is back); stuck bits are forced after them. Weights with records of one image
(`weight_scope: buffer`) give that image its own weight variant.
"""
import numpy as np

WEIGHT_MEM, ACT_MEM = 3, 4          # stuck site codes (faults.plan.STUCK_SITES)


def _weight_index(addr, g):
    """Parameter-image byte -> (is_bias, flat index into the device weights (Z, Cb, Kh, Kw, LANE, VEC) or the
    device bias (Op,), visible)."""
    addr = np.asarray(addr, np.int64)
    per = g.Cp * g.Kh * g.Kw
    nw = g.Op * per
    is_bias = addr >= nw
    op = np.where(is_bias, addr - nw, addr // per)
    rem = addr % per
    c, ky, kx = rem // (g.Kh * g.Kw), (rem // g.Kw) % g.Kh, rem % g.Kw
    visible = (op >= g.po) & (op < g.po + g.O) & (is_bias | (c < g.Cg))
    z, ln = op // g.lane, op % g.lane
    flat = ((((z * g.Cb + c // g.vec) * g.Kh + ky) * g.Kw + kx) * g.lane + ln) * g.vec + c % g.vec
    return is_bias, np.where(is_bias, op, flat), visible


def _act_index(n, addr, g):
    """Activation-image byte of image n -> (flat index into the device input (N, group, Cb, H, W, VEC), visible)."""
    addr = np.asarray(addr, np.int64)
    c, y, x = addr // (g.H * g.W), (addr // g.W) % g.H, addr % g.W
    visible = c < g.C
    j, cc = c // g.Cg, c % g.Cg
    flat = (((((np.asarray(n, np.int64) * g.group + j) * g.Cb + cc // g.vec) * g.H + y) * g.W + x) * g.vec
            + cc % g.vec)
    return flat, visible


def _xor(buf, flat, bit):
    u = buf.reshape(-1).view(np.uint8)
    np.bitwise_xor.at(u, flat, (1 << np.asarray(bit, np.int64)).astype(np.uint8))


def _force(buf, flat, bit, value):
    u = buf.reshape(-1).view(np.uint8)
    for f, b, v in zip(flat.tolist(), np.asarray(bit).tolist(), np.asarray(value).tolist()):
        u[f] = (u[f] & (~(1 << b) & 0xFF)) | (v << b)


def _apply_weights(wdev, bias, events, stuck, g):
    """Copies of the device weights and bias with `events` (addr, bit) flipped, then `stuck` forced."""
    w, b = wdev.copy(), bias.copy()
    for recs, op in ((events, _xor), (stuck, _force)):
        if not len(recs):
            continue
        is_bias, flat, visible = _weight_index(recs["addr"], g)
        for target, sel in ((w, ~is_bias & visible), (b, is_bias & visible)):
            if sel.any():
                args = (recs["bit"][sel],) + ((recs["value"][sel],) if op is _force else ())
                op(target, flat[sel], *args)
    return w, b


def weight_variants(wdev, bias, events, stuck, g):
    """[(images, device weights, device bias)]: the images without records of their own share the `n = -1`
    records; each image with its own records gets its own copy. Without any weight faults: one variant holding
    the original buffers."""
    stuck = stuck[stuck["site"] == WEIGHT_MEM]
    if not len(events) and not len(stuck):
        return [(np.arange(g.N), wdev, bias)]
    shared = events[events["n"] < 0]
    own = np.unique(events["n"][events["n"] >= 0])
    out = []
    rest = np.setdiff1d(np.arange(g.N), own)
    if len(rest):
        out.append((rest,) + _apply_weights(wdev, bias, shared, stuck, g))
    for n in own:
        mine = np.concatenate([shared, events[events["n"] == n]])
        out.append((np.array([n]),) + _apply_weights(wdev, bias, mine, stuck, g))
    return out


def faulty_input(xdev, events, stuck, g):
    """A copy of the device input with the activation-memory records flipped, then stuck bits forced in every
    image; the original when there are none."""
    stuck = stuck[stuck["site"] == ACT_MEM]
    if not len(events) and not len(stuck):
        return xdev
    x = xdev.copy()
    if len(events):
        flat, visible = _act_index(events["n"], events["addr"], g)
        _xor(x, flat[visible], events["bit"][visible])
    if len(stuck):
        n = np.repeat(np.arange(g.N), len(stuck))
        addr, bit, value = (np.tile(stuck[k], g.N) for k in ("addr", "bit", "value"))
        flat, visible = _act_index(n, addr, g)
        _force(x, flat[visible], bit[visible], value[visible])
    return x
