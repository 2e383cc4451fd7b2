"""fault_vectors.json `layers` scenarios as FaultPlan objects (for these tests and for backend conformance tests:
a backend fed `scenario_plan(layer, scenario)` must return `scenario["output"]` exactly)."""
import numpy as np

from caffe_unstable.accel.faults.plan import (MEM_EVENT_DTYPE, RATE_EVENT_DTYPE, FaultPlan, LayerPlan, TimingPlan,
                                              mac_events, records)
from caffe_unstable.accel.faults.stuck_at import stuck_records

LAYER_INDEX = 1      # the key layer_index the vectors were sampled with


def widths(scenario):
    acc = scenario.get("accelerator", {})
    return tuple(acc.get(k, 32) for k in ("width_product", "width_accumulator", "width_final"))


def geometry(layer, scenario):
    g = dict(layer["geometry"])
    g.update(zip(("width_product", "width_accumulator", "width_final"), widths(scenario)))
    return g


def timing_plan(t):
    if not t:
        return None
    K_lane = None if t["K_lane"] is None else np.array(t["K_lane"], np.int8)
    thresholds = None if t["thresholds"] is None else np.array([[int(v) for v in row] for row in t["thresholds"]],
                                                               np.uint64)
    keys = None if t["keys"] is None else np.array([int(k) for k in t["keys"]], np.uint64)
    return TimingPlan(t["sampled_value"], tuple(t["sites"]), t["final_slack_bits"], t["tree_slack_bits"],
                      K_lane=K_lane, thresholds=thresholds, keys=keys, model=t["model"])


def scenario_plan(layer, scenario):
    """A one-layer, one-image FaultPlan holding the scenario's plan."""
    p = scenario["plan"]
    cols = lambda rows, k: [r[k] for r in rows]  # noqa: E731
    mac = p.get("mac_events", [])
    rate = p.get("rate_events", [])
    lp = LayerPlan(LAYER_INDEX, layer["name"], geometry(layer, scenario),
                   mac_events=mac_events(*(cols(mac, k) for k in range(7))),
                   timing=timing_plan(p.get("timing")),
                   rate_events=records(RATE_EVENT_DTYPE, ["n", "o", "y", "x", "t"],
                                       **{f: cols(rate, k) for k, f in enumerate(RATE_EVENT_DTYPE.names)}),
                   stuck=stuck_records(p.get("stuck", [])))
    for kind in ("weight_events", "act_events"):
        ev = p.get(kind, [])
        setattr(lp, kind, records(MEM_EVENT_DTYPE, ["n", "addr", "bit"],
                                  **{f: cols(ev, k) for k, f in enumerate(MEM_EVENT_DTYPE.names)}))
    return FaultPlan(seed=11, batch=1, layers=[lp])
