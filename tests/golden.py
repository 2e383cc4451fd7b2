"""Loading and running the golden cases of real BVLC Caffe (../shared/golden) through our Net.

One harness for every case: build the case's prototxt, load the inputs and parameters Caffe used, run forward and
backward, and compare every blob, loss and parameter gradient. Failures name the blob and its max difference.
"""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import caffe_unstable as caffe

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"


def _manifest(kind):
    path = GOLDEN / kind / "manifest.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())


def layer_cases():
    """Case names of golden/layers/manifest.json (a single skipped param when ../shared is absent)."""
    cases = [c["case"] for c in _manifest("layers")]
    return cases or [pytest.param(None, marks=pytest.mark.skip(reason=f"{GOLDEN} absent"))]


def net_cases():
    out = []
    for entry in _manifest("nets"):
        for phase, info in entry["files"].items():
            out.append(pytest.param(entry, phase, info, id=f"{entry['net']}-{phase}"))
    return out or [pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"{GOLDEN} absent"))]


def assert_close(name, ours, theirs, rtol, atol, exact=False):
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape or ours.size == theirs.size == 1, \
        f"{name}: shape {ours.shape} != Caffe's {theirs.shape}"
    ours = ours.reshape(theirs.shape)
    if exact:
        bad = np.flatnonzero(ours.ravel() != theirs.ravel())
        assert bad.size == 0, f"{name}: {bad.size} values differ from Caffe (exact), first at {bad[0]}: " \
                              f"{ours.ravel()[bad[0]]} vs {theirs.ravel()[bad[0]]}"
        return
    diff = np.abs(ours - theirs)
    ok = diff <= atol + rtol * np.abs(theirs)
    assert ok.all(), f"{name}: maxdiff {diff.max():.3g} (rtol {rtol}, atol {atol:.3g}); " \
                     f"{int((~ok).sum())} of {ok.size} values out of tolerance"


def _phase(text):
    return caffe.TRAIN if text == "TRAIN" else caffe.TEST


def run_layer_case(case, rtol=1e-4, atol=1e-5):
    """Build golden/layers/<case>, run it, and compare everything Caffe recorded."""
    prototxt = GOLDEN / "layers" / f"{case}.prototxt"
    with h5py.File(GOLDEN / "layers" / f"{case}.h5", "r") as f:
        net = caffe.Net(str(prototxt), _phase(f.attrs["phase"]), rng=0)
        if "params" in f:
            for lname in f["params"]:
                for idx in f["params"][lname]:
                    net.params[lname][int(idx)].data[...] = f["params"][lname][idx]["data"][()]
        for name in f["inputs"]:
            net.blobs[name].data[...] = f["inputs"][name][()]
        net._forward(0, len(net.layers) - 1)
        exact_blobs = _exact_blobs(net)
        for name in f["blobs"]:
            assert_close(f"{case}: blob '{name}' data", net.blobs[name].data, f["blobs"][name]["data"][()],
                         rtol, atol, exact=name in exact_blobs)
        for lname in f.get("params", {}):
            for idx in f["params"][lname]:
                g = f["params"][lname][idx]
                if "data_after_forward" in g:
                    assert_close(f"{case}: param {lname}[{idx}] after forward", net.params[lname][int(idx)].data,
                                 g["data_after_forward"][()], rtol, atol)
        if not f.attrs["backward"]:
            return net
        for name in f.get("top_diffs_given", {}):
            net.blobs[name].diff[...] = f["top_diffs_given"][name][()]
        net._backward(len(net.layers) - 1, 0)
        for name in f["blobs"]:
            if "diff" in f["blobs"][name]:
                assert_close(f"{case}: blob '{name}' diff", net.blobs[name].diff, f["blobs"][name]["diff"][()],
                             rtol, atol)
        for lname in f.get("params", {}):
            for idx in f["params"][lname]:
                g = f["params"][lname][idx]
                if "diff" in g:
                    assert_close(f"{case}: param {lname}[{idx}] diff", net.params[lname][int(idx)].diff,
                                 g["diff"][()], rtol, atol)
    return net


def _exact_blobs(net):
    """Integer-valued results compared exactly: Accuracy/ArgMax outputs and the MAX-pooling argmax mask."""
    exact = set()
    for lname, layer in zip(net._layer_names, net.layers):
        tops = net.top_names[lname]
        if layer.type in ("Accuracy", "ArgMax"):
            exact.update(tops)
        if layer.type == "Pooling" and len(tops) > 1:
            exact.add(tops[1])
    return exact


def run_net_case(entry, phase, info, rtol=1e-3):
    folder = GOLDEN / "nets" / entry["net"]
    net = caffe.Net(str(folder / entry["prototxt"]), str(folder / entry["caffemodel"]), _phase(phase), rng=0)
    with h5py.File(folder / info["h5"], "r") as f:
        assert json.loads(f.attrs["layer_names"]) == net._layer_names
        for name in f["inputs"]:
            net.blobs[name].data[...] = f["inputs"][name][()]
        loss = net._forward(0, len(net.layers) - 1)
        assert abs(loss - float(f.attrs["loss"])) <= rtol * abs(float(f.attrs["loss"])), \
            f"{entry['net']} {phase}: loss {loss} vs Caffe {float(f.attrs['loss'])}"
        exact = _exact_blobs(net)
        for name in f["blobs"]:
            ref = f["blobs"][name]["data"][()]
            assert_close(f"{entry['net']} {phase}: blob '{name}' data", net.blobs[name].data, ref, rtol,
                         1e-5 * max(1.0, float(np.abs(ref).max())), exact=name in exact)
        for out, value in info["outputs"].items():
            assert_close(f"{entry['net']} {phase}: output '{out}'", net.blobs[out].data, value, rtol, 1e-6,
                         exact=out in exact)
        if not info["backward"]:
            return net
        net._backward(len(net.layers) - 1, 0)
        for name in f["blobs"]:
            if "diff" in f["blobs"][name]:
                ref = f["blobs"][name]["diff"][()]
                assert_close(f"{entry['net']} {phase}: blob '{name}' diff", net.blobs[name].diff, ref, rtol,
                             1e-5 * max(float(np.abs(ref).max()), 1e-12))
        for lname in f["params"]:
            for idx in f["params"][lname]:
                ref = f["params"][lname][idx]["diff"][()]
                assert_close(f"{entry['net']} {phase}: param {lname}[{idx}] diff", net.params[lname][int(idx)].diff,
                             ref, rtol, 1e-5 * max(float(np.abs(ref).max()), 1e-12))
    return net
