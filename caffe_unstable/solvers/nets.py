"""The solver's nets: Solver::InitTrainNet, InitTestNets and LoadNetWeights (solver.cpp:64-199), caffe.md §4.1.

Net files named in the solver are read relative to the working directory, as Caffe does. Every net gets the
solver's one random Generator (train net first, then each test net, as Caffe's fillers draw from its one
global RNG) and the solver's accelerator.
"""
import os

from ..errors import CaffeUnstableError
from ..io import prototxt as pt
from ..net.net import Net
from ..proto import caffe_pb2

TRAIN_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def train_net(solver):
    """The TRAIN net, with the solver's `weights` loaded into it."""
    p, log = solver.param, solver.log
    given = [f for f in TRAIN_FIELDS if p.HasField(f)]
    if not given:
        raise CaffeUnstableError(solver.where(), "SolverParameter must specify a train net using one of these "
                                                 f"fields: {', '.join(TRAIN_FIELDS)}")
    if len(given) > 1:
        raise CaffeUnstableError(solver.where(given[1]), "SolverParameter must not contain more than one of these "
                                                         f"fields specifying a train_net: {', '.join(TRAIN_FIELDS)} "
                                                         f"(found {', '.join(given)})")
    if p.HasField("train_net_param"):
        log.info("Creating training net specified in train_net_param.", "solver.cpp:88")
        net_param, source = _copy(p.train_net_param), solver.source
    elif p.HasField("train_net"):
        log.info(f"Creating training net from train_net file: {p.train_net}", "solver.cpp:92")
        net_param, source = _read_net(solver, "train_net", p.train_net), p.train_net
    elif p.HasField("net_param"):
        log.info("Creating training net specified in net_param.", "solver.cpp:97")
        net_param, source = _copy(p.net_param), solver.source
    else:
        log.info(f"Creating training net from net file: {p.net}", "solver.cpp:102")
        net_param, source = _read_net(solver, "net", p.net), p.net
    # solver defaults < the net file's own state < train_state (solver.cpp:107-112)
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
    state.MergeFrom(net_param.state)
    state.MergeFrom(p.train_state)
    net = Net(net_param, state=state, source=source, accel=solver.accel, rng=solver.rng, log=log)
    for entry in p.weights:
        load_net_weights(net, entry, log)
    return net


def test_nets(solver):
    """The TEST nets: test_net_param entries, then test_net files, then copies of `net`/`net_param` for the
    remaining test_iter entries."""
    p, log = solver.param, solver.log
    generic = [f for f in ("net", "net_param") if p.HasField(f)]
    if len(generic) > 1:
        raise CaffeUnstableError(solver.where("net_param"), "Both net_param and net_file may not be specified.")
    explicit = len(p.test_net_param) + len(p.test_net)
    if (len(p.test_iter) < explicit) if generic else (len(p.test_iter) != explicit):
        raise CaffeUnstableError(solver.where("test_iter"), "test_iter must be specified for each test network "
                                                            f"({len(p.test_iter)} test_iter for {explicit} "
                                                            "test_net/test_net_param)")
    count = len(p.test_iter) if generic else explicit
    if len(p.test_state) and len(p.test_state) != count:
        raise CaffeUnstableError(solver.where("test_state"), "test_state must be unspecified or specified once per "
                                                             f"test net ({len(p.test_state)} for {count} test nets)")
    if count and p.test_interval <= 0:
        raise CaffeUnstableError(solver.where("test_interval"), f"test_interval must be > 0 when there are test "
                                                                f"nets (got {p.test_interval}, {count} test nets)")
    specs = [("test_net_param", _copy(q), solver.source) for q in p.test_net_param]
    specs += [(f"test_net file: {f}", _read_net(solver, "test_net", f), f) for f in p.test_net]
    for _ in range(count - explicit):
        if p.HasField("net_param"):
            specs.append(("net_param", _copy(p.net_param), solver.source))
        else:
            specs.append((f"net file: {p.net}", _read_net(solver, "net", p.net), p.net))
    nets = []
    for i, (described, net_param, source) in enumerate(specs):
        # solver defaults < the net's own state < test_state[i] (solver.cpp:178-186)
        state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
        state.MergeFrom(net_param.state)
        if len(p.test_state):
            state.MergeFrom(p.test_state[i])
        log.info(f"Creating test net (#{i}) specified by {described}", "solver.cpp:190")
        net = Net(net_param, state=state, source=source, accel=solver.accel, rng=solver.rng, log=log)
        for entry in p.weights:
            load_net_weights(net, entry, log)
        nets.append(net)
    return nets


def load_net_weights(net, entry, log):
    """LoadNetWeights: `entry` is split at commas; each file is loaded in order (later ones win by layer name)."""
    for name in entry.split(","):
        name = name.strip()
        log.info(f"Finetuning from {name}", "solver.cpp:72")
        net.copy_from(name)


def _read_net(solver, field, path):
    if not os.path.isfile(path):
        raise CaffeUnstableError(solver.where(field), f"{field}: \"{path}\" does not exist (net paths in a solver "
                                                      f"are relative to the working directory, {os.getcwd()})")
    return pt.read_net_text(path, solver.log)


def _copy(net_param):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    return out
