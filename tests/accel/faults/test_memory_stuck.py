"""faults.md §6: memory upsets (weight/bias and activation images) and permanent stuck-at maps."""
import numpy as np
import pytest

from caffe_unstable.accel.faults.indexing import conv_geometry
from caffe_unstable.accel.faults.memory import (MemoryFlips, activation_image, flip_bytes, force_bytes,
                                                parameter_image, sample_bit_flips, split_parameter_image)
from caffe_unstable.accel.faults.plan import STUCK_SITES, LayerOp
from caffe_unstable.accel.faults.rng import PassKey, generator
from caffe_unstable.accel.faults.stuck_at import StuckAt, materialize, stuck_records
from caffe_unstable.errors import CaffeUnstableError


def test_memory_samplers_reproduce_layer_vectors(vectors):
    checked = 0
    for layer in vectors["layers"]:
        for s in layer["scenarios"]:
            if s["name"] not in ("weight_mem_flips", "act_mem_flips"):
                continue
            df = s["derived_from"]
            kind = "weight" if s["name"].startswith("weight") else "act"
            model = MemoryFlips(**{f"{kind}_bit_flip_prob": df["p"]})
            lp = model.plan(LayerOp(df["key"][4], layer["name"], 1), layer["geometry"], PassKey(df["seed"]))
            got = getattr(lp, f"{kind}_events").tolist()
            assert got == [tuple(r) for r in s["plan"][f"{kind}_events"]], (layer["name"], s["name"])
            checked += 1
    assert checked == 8


def test_parameter_and_activation_images():
    g = conv_geometry(3, 4, 4, 6, 3, 3, 1, 1, 1, 4, 4, 6)      # Cg 3 -> Cp 4, O 6 -> Op 8, po 1
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (6, 3, 3, 3), dtype=np.int8)
    b = rng.integers(-128, 128, 6, dtype=np.int8)
    img = parameter_image(w, b, g)
    assert img.size == g["N_WBYTES"] == 8 * 4 * 9 + 8
    assert img[(1 * 4 + 0) * 9] == w[0, 0, 0, 0] and img[8 * 4 * 9 + 1] == b[0] and img[8 * 4 * 9] == 0
    w2, b2 = split_parameter_image(img, g)
    assert np.array_equal(w2, w) and np.array_equal(b2, b)
    flipped = flip_bytes(img, [36, 36, 37], [7, 7, 0])              # a repeated flip cancels
    assert flipped[36] == img[36] and flipped[37] == img[37] ^ 1
    forced = force_bytes(img, [36], [7], [1])
    assert forced[36] == (img[36].view(np.uint8) | 0x80).view(np.int8)
    x = rng.integers(-128, 128, (3, 4, 4), dtype=np.int8)
    a = activation_image(x, g)
    assert a.size == g["N_ABYTES"] == 4 * 16 and (a[48:] == 0).all() and np.array_equal(a[:48], x.ravel())


def test_ddr_scope_accumulates_until_upload():
    g = conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6)
    model = MemoryFlips(weight_bit_flip_prob=0.002, weight_scope="ddr")
    first = model.plan(LayerOp(1, "conv", 3), g, PassKey(11, iteration=0)).weight_events
    assert len(first) and (first["n"] == -1).all()
    addr, bit = sample_bit_flips(generator(11, (5, 0, 1, 0, 1, 0)), g["N_WBYTES"], 0.002)
    second = model.plan(LayerOp(1, "conv", 3), g, PassKey(11, iteration=1)).weight_events
    expect = set(zip(first["addr"].tolist(), first["bit"].tolist())) ^ set(zip(addr.tolist(), bit.tolist()))
    assert set(zip(second["addr"].tolist(), second["bit"].tolist())) == expect
    model.upload()
    third = model.plan(LayerOp(1, "conv", 3), g, PassKey(11, iteration=1)).weight_events
    assert set(zip(third["addr"].tolist(), third["bit"].tolist())) == set(zip(addr.tolist(), bit.tolist()))


def test_buffer_scope_is_per_image_and_act_flips():
    g = conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6)
    lp = MemoryFlips(0.004, "buffer", 0.004).plan(LayerOp(2, "conv", 4), g, PassKey(3))
    assert set(lp.weight_events["n"].tolist()) <= {0, 1, 2, 3} and len(lp.weight_events) > 4
    assert lp.act_events["addr"].max() < g["N_ABYTES"] and len(lp.act_events) > 4
    lp.validate(g, 4)
    with pytest.raises(CaffeUnstableError, match=r"weight_bit_flip_prob: must be in \[0, 0.01\]"):
        MemoryFlips(0.5)


def test_stuck_map_records_and_random_materialisation():
    g = conv_geometry(8, 6, 6, 6, 3, 3, 1, 1, 1, 4, 4, 6)
    explicit = [{"site": "multiplier", "lane": 1, "vec": 2, "bit": 14, "value": 1},
                {"site": "weight_mem", "layer": "conv2", "address": 7, "bit": 3, "value": 0}]
    random = [{"site": "accumulator", "count": 3, "seed": 5}, {"site": "act_mem", "fraction": 0.01, "seed": 6}]
    model = StuckAt(explicit, random, lane_num=4, vec_size=4, widths=(32, 29, 32))
    acc = [m for m in model.datapath if m["site"] == "accumulator"]
    assert len(acc) == 3 and len({m["lane"] for m in acc}) == 3 and all(0 <= m["bit"] < 29 for m in acc)
    assert acc == materialize(random[0], 0, 4, 4, (32, 29, 32))          # deterministic: the device's own map
    lp1 = model.plan(LayerOp(1, "conv1", 2), g)
    lp2 = model.plan(LayerOp(2, "conv2", 2), g)
    sites1, sites2 = lp1.stuck["site"].tolist(), lp2.stuck["site"].tolist()
    assert sites1.count(STUCK_SITES["weight_mem"]) == 0 and sites2.count(STUCK_SITES["weight_mem"]) == 1
    n_act = sites1.count(STUCK_SITES["act_mem"])
    assert 0 < n_act < 8 * g["N_ABYTES"] * 0.03
    assert lp1.stuck[lp1.stuck["site"] == STUCK_SITES["act_mem"]].tolist() != \
        lp2.stuck[lp2.stuck["site"] == STUCK_SITES["act_mem"]].tolist()      # per-layer key
    lp1.validate(g, 2)
    assert model.counts() == {"multiplier": 1, "product": 0, "accumulator": 3}
    rec = stuck_records(explicit)
    assert rec.tolist() == [(0, 1, 2, -1, 14, 1), (3, -1, -1, 7, 3, 0)]


def test_stuck_vector_scenario_map(vectors):
    s = next(s for s in vectors["layers"][0]["scenarios"] if s["name"] == "stuck_at")
    rec = stuck_records(s["plan"]["stuck"])
    assert rec.tolist() == [(0, 1, 2, -1, 14, 1), (0, 0, 1, -1, 15, 1), (1, 2, -1, -1, 20, 1), (2, 3, -1, -1, 5, 0)]
