"""faults.md §13 item 12: a fault-injected training run resumed from a snapshot at iteration n has the plans and,
after n + 5 iterations, the weights of the uninterrupted run (plans follow the solver state, §3.1). The data are
fed by the script, as pycaffe users do, so that both runs see the same batches (Caffe does not restore a data
layer's position)."""
import numpy as np
import pytest
from google.protobuf import text_format

import caffe_unstable as caffe
from caffe_unstable.accel.quant import LayerFormat
from caffe_unstable.accel.quant_table import QuantTable
from caffe_unstable.proto import caffe_pb2

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 3 dim: 10 dim: 10 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""
TABLE = {"conv1": LayerFormat(6, 5, 4), "ip1": LayerFormat(7, 4, 3)}
N, TOTAL = 5, 10
FAULTS = {"soft_errors": {"ser": 2e-3}, "carry_horizon": {"horizon_k": 14}}


def batches():
    rng = np.random.default_rng(4)
    return [(rng.uniform(-2, 2, (8, 3, 10, 10)).astype(np.float32), rng.integers(0, 5, 8).astype(np.float32))
            for _ in range(TOTAL)]


def make_solver(folder, faults, momentum=0.9):
    param = caffe_pb2.SolverParameter()
    text_format.Parse(f"base_lr: 0.05 momentum: {momentum} weight_decay: 0.001 lr_policy: 'step' gamma: 0.5 "
                      f"stepsize: 3 display: 0 max_iter: {TOTAL} random_seed: 3 snapshot_after_train: false "
                      f"snapshot_prefix: '{folder}/small'", param)
    text_format.Parse(NET, param.net_param)
    acc = caffe.accel.open("numba", seed=21, **faults)
    acc.quant = QuantTable(dict(TABLE))
    solver = caffe.get_solver(param, accel=acc)
    return solver, acc


def run(solver, acc, data, start, stop, plans):
    for it in range(start, stop):
        x, y = data[it]
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["label"].data[...] = y
        solver.step(1)
        plans.append(acc.last_plan)
        plans[-1].late_adds = sum(st["late_adds"] or 0 for st in acc.last_stats.values())


@pytest.mark.parametrize("faults", list(FAULTS))
def test_resumed_run_has_the_plans_and_weights_of_the_uninterrupted_one(tmp_path, faults):
    data = batches()
    straight, acc = make_solver(tmp_path / "a", FAULTS[faults])
    (tmp_path / "a").mkdir()
    init = {name: [b.data.copy() for b in blobs] for name, blobs in straight.net.params.items()}
    plans_straight = []
    run(straight, acc, data, 0, TOTAL, plans_straight)

    (tmp_path / "b").mkdir()
    first, acc1 = make_solver(tmp_path / "b", FAULTS[faults])
    for name, values in init.items():
        for blob, v in zip(first.net.params[name], values):
            blob.data[...] = v
    plans = []
    run(first, acc1, data, 0, N, plans)
    first.snapshot()
    resumed, acc2 = make_solver(tmp_path / "b", FAULTS[faults])
    resumed.restore(str(tmp_path / "b" / f"small_iter_{N}.solverstate"))
    assert resumed.iter == N
    run(resumed, acc2, data, N, TOTAL, plans)

    assert len(plans) == len(plans_straight) == TOTAL
    for a, b in zip(plans, plans_straight):
        assert (a.phase, a.iteration, a.pass_) == (b.phase, b.iteration, b.pass_)
        assert len(a.layers) == len(b.layers) == 2
        for la, lb in zip(a.layers, b.layers):
            np.testing.assert_array_equal(la.mac_events, lb.mac_events)
            if la.timing is not None:
                np.testing.assert_array_equal(la.timing.keys, lb.timing.keys)
    assert sum(len(lp.mac_events) for p in plans for lp in p.layers) > 0 or faults == "carry_horizon"
    assert sum(p.late_adds for p in plans) > 0 or faults == "soft_errors"
    for name in ("conv1", "ip1"):
        for blob_a, blob_b in zip(resumed.net.params[name], straight.net.params[name]):
            np.testing.assert_array_equal(blob_a.data, blob_b.data)
    moved = max(np.abs(straight.net.params[n][0].data - init[n][0]).max() for n in ("conv1", "ip1"))
    assert moved > 1e-3                                   # the runs did train
