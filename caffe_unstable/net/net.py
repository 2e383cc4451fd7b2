"""Caffe's Net (src/caffe/net.cpp) with pycaffe's Python surface (python/caffe/pycaffe.py, _caffe.cpp).

Build: read + upgrade, filter by NetState, insert Splits, create each layer by type, connect blobs (in-place
tops share the Blob), set up, loss weights, params (sharing by name), then Caffe's backward-need analysis.
"""
import os
from collections import OrderedDict

import numpy as np

from ..errors import CaffeUnstableError
from ..io import caffemodel as cm
from ..io import prototxt as pt
from ..log import GlogLogger, format_value
from ..ops import layer_class
from ..proto import caffe_pb2
from . import accel_bridge, graph
from .blob import Blob

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
_DEFAULT_SPEC = caffe_pb2.ParamSpec()


class _SeedBox:
    """Seed set by caffe.set_random_seed (pycaffe's process-wide RNG seed); None = fresh entropy."""
    seed = None


def set_random_seed(seed):
    _SeedBox.seed = int(seed)


def _new_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None:
        return np.random.default_rng(int(rng))
    return np.random.default_rng(_SeedBox.seed)


class Net:
    """A Caffe net. pycaffe forms: Net(file, phase, level=0, stages=None, weights=None) and the legacy
    Net(file, weights, phase). `file` may also be a caffe_pb2.NetParameter. Extra keywords: accel, rng, log;
    state (a NetState used as is instead of phase/level/stages) and source (the file named in errors) for the
    solver's nets."""

    def __init__(self, network_file, *args, phase=None, level=0, stages=None, weights=None,
                 accel=None, rng=None, log=None, state=None, source=None):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)) and not isinstance(args[0], int):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            level = args.pop(0)
        if args:
            stages = args.pop(0)
        if phase is None and state is not None:
            phase = state.phase
        if phase is None:
            raise TypeError("Net() needs a phase: caffe.Net(model, caffe.TEST) or caffe.Net(model, weights, caffe.TEST)")
        self.log = log or GlogLogger()
        self.accel = accel
        self.fault_key = None              # (phase, iteration, pass_) of the next forward, set by a solver
        self._forward_count = 0            # a standalone net's pass counter (faults.md §3.1)
        self.rng = _new_rng(rng)
        if isinstance(network_file, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(network_file)
            self._source = os.fspath(source) if source is not None else "<NetParameter>"
            param = pt.upgrade.upgrade_net_as_needed(param, self._source, self.log)
        else:
            self._source = os.fspath(network_file)
            param = pt.read_net_text(self._source, self.log)
        if state is not None:
            # the solver's merged NetState (solver.cpp:107-112), used as given so unset fields stay unset
            param.state.CopyFrom(state)
        else:
            param.state.phase = int(phase)
            param.state.level = int(level)
            for s in stages or ():
                param.state.stage.append(s)
        try:
            self._init(param)
        except CaffeUnstableError as exc:
            if exc.where.startswith("layer '"):  # name the file too: "<file> layer '<name>'"
                raise CaffeUnstableError(f"{self._source} {exc.where}", exc.what) from None
            raise
        if weights is not None:
            self.copy_from(weights)

    # ---------------------------------------------------------------------------------------- build
    def _init(self, in_param):
        log = self.log
        filtered = graph.filter_net(in_param, self._source, log)
        if log.enabled:
            log.info("Initializing net from parameters: \n" + pt.debug_string(filtered).rstrip("\n"), "net.cpp:53")
        param = graph.insert_splits(filtered)
        self.name = param.name
        self.phase = param.state.phase
        self.layers, self._layer_names = [], []
        self._blob_list, self._blob_names = [], []
        self._bottom_ids, self._top_ids = [], []
        self._bottom_need_backward, self._layer_need_backward = [], []
        self._blob_need_backward = []
        self._loss_weights = []            # per layer: list of per-top weights
        self._param_owner = []             # per net param: owner index or -1
        self._param_layer = []             # per net param: (layer index, blob index)
        self._param_names = {}             # name -> net param index
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self._has_params_lr, self._has_params_decay = [], []
        self._learnable_of = []            # per net param: learnable index
        self._input_ids = []
        name_to_id = {}
        available = []                     # blobs produced and not yet consumed, in creation order
        memory_used = 0
        for layer_id, lp_net in enumerate(param.layer):
            lp = caffe_pb2.LayerParameter()
            lp.CopyFrom(lp_net)
            if not lp.HasField("phase"):
                lp.phase = param.state.phase
            where = f"layer '{lp.name}'"
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise CaffeUnstableError(where, "propagate_down param must be specified either 0 or bottom_size times")
            cls = layer_class(lp.type, where)
            log.info(f"Creating layer {lp.name}", "layer_factory.hpp:77")
            layer = cls(lp, self.rng)
            layer.log = log
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            log.info(f"Creating Layer {lp.name}", "net.cpp:86")
            need_backward = False
            bottoms, bottom_ids, bneed = [], [], []
            for j, b in enumerate(lp.bottom):
                if b not in available:
                    raise CaffeUnstableError(where, f"Unknown bottom blob '{b}' (layer '{lp.name}', bottom index {j})")
                bid = name_to_id[b]
                log.info(f"{lp.name} <- {b}", "net.cpp:408")
                available.remove(b)
                bottoms.append(self._blob_list[bid])
                bottom_ids.append(bid)
                nb = self._blob_need_backward[bid]
                bneed.append(bool(lp.propagate_down[j]) if len(lp.propagate_down) else nb)
                need_backward |= nb
            tops, top_ids = [], []
            top_names = list(lp.top)
            if layer.auto_top_blobs:
                needed = max(layer.min_top_blobs, layer.exact_num_top_blobs)
                top_names += [None] * max(0, needed - len(top_names))
            for j, t in enumerate(top_names):
                if t is not None and j < len(lp.bottom) and lp.bottom[j] == t:
                    log.info(f"{lp.name} -> {t} (in-place)", "net.cpp:369")
                    tid = name_to_id[t]
                elif t is not None and t in name_to_id:
                    raise CaffeUnstableError(where, f"Top blob '{t}' produced by multiple sources.")
                else:
                    name = t if t is not None else "(automatic)"
                    if t is not None:
                        log.info(f"{lp.name} -> {t}", "net.cpp:382")
                    tid = len(self._blob_list)
                    self._blob_list.append(Blob())
                    self._blob_names.append(name)
                    self._blob_need_backward.append(False)
                    if t is not None:
                        name_to_id[t] = tid
                if t is not None:
                    available.append(t)
                tops.append(self._blob_list[tid])
                top_ids.append(tid)
                if lp.type == "Input":
                    self._input_ids.append(tid)
            layer.setup(bottoms, tops)
            log.info(f"Setting up {lp.name}", "net.cpp:124")   # after SetUp, as Caffe logs it
            weights = self._set_loss_weights(layer, tops, where)
            for j, top in enumerate(tops):
                log.info(f"Top shape: {cm.shape_string(top.shape)}", "net.cpp:131")
                if weights[j]:
                    log.info(f"    with loss weight {format_value(weights[j])}", "net.cpp:134")
                memory_used += top.count
            log.info(f"Memory required for data: {memory_used * 4}", "net.cpp:139")
            specs = lp_net.param
            if len(specs) > len(layer.blobs):
                raise CaffeUnstableError(where, f"Too many params specified for layer {lp.name}")
            layer.param_propagate_down = []
            for p in range(len(layer.blobs)):
                spec = specs[p] if p < len(specs) else _DEFAULT_SPEC
                layer.param_propagate_down.append(spec.lr_mult != 0)
                need_backward |= spec.lr_mult != 0
            for p in range(len(layer.blobs)):
                self._append_param(layer_id, layer, p)
            self._bottom_ids.append(bottom_ids)
            self._top_ids.append(top_ids)
            self._bottom_need_backward.append(bneed)
            self._layer_need_backward.append(need_backward)
            self._loss_weights.append(weights)
            if need_backward:
                for tid in top_ids:
                    self._blob_need_backward[tid] = True
        self._analyze_backward(param)
        self._outputs = sorted(available)
        for name in self._outputs:
            log.info(f"This network produces output {name}", "net.cpp:244")
        self._output_ids = [name_to_id[n] for n in self._outputs]
        self._name_to_id = name_to_id
        self._param = param
        log.info("Network initialization done.", "net.cpp:257")

    def _set_loss_weights(self, layer, tops, where):
        lp = layer.param
        if layer.is_loss and not len(lp.loss_weight):
            lp.loss_weight.append(1.0)  # LossLayer::LayerSetUp adds the default weight 1
        if len(lp.loss_weight) and len(lp.loss_weight) != len(tops):
            raise CaffeUnstableError(where, "loss_weight must be unspecified or specified once per top blob.")
        weights = [float(np.float32(w)) for w in lp.loss_weight] or [0.0] * len(tops)
        for top, w in zip(tops, weights):
            if w:
                top.diff[...] = w
        layer.loss_weights = weights
        return weights

    def _append_param(self, layer_id, layer, p):
        lp = layer.param
        spec = lp.param[p] if p < len(lp.param) else _DEFAULT_SPEC
        net_id = len(self._param_owner)
        self._param_layer.append((layer_id, p))
        name = spec.name
        if not name or name not in self._param_names:
            if name:
                self._param_names[name] = net_id
            self._param_owner.append(-1)
            self._learnable_of.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[p])
            self.params_lr.append(spec.lr_mult)
            self._has_params_lr.append(spec.HasField("lr_mult"))
            self.params_weight_decay.append(spec.decay_mult)
            self._has_params_decay.append(spec.HasField("decay_mult"))
            return
        owner_id = self._param_names[name]
        self._param_owner.append(owner_id)
        owner_layer_id, owner_p = self._param_layer[owner_id]
        owner_layer = self.layers[owner_layer_id]
        self.log.info(f"Sharing parameters '{name}' owned by layer '{self._layer_names[owner_layer_id]}', "
                      f"param index {owner_p}", "net.cpp:493")
        owner_blob = owner_layer.blobs[owner_p]
        mine = layer.blobs[p]
        where = f"layer '{lp.name}'"
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if owner_blob.count != mine.count:
                raise CaffeUnstableError(where, f"Cannot share param '{name}' owned by layer "
                                                f"'{self._layer_names[owner_layer_id]}' with layer '{lp.name}'; "
                                                f"count mismatch.  Owner layer param shape is "
                                                f"{cm.shape_string(owner_blob.shape)}; sharing layer shape is "
                                                f"{cm.shape_string(mine.shape)}")
        elif owner_blob.shape != mine.shape:
            raise CaffeUnstableError(where, f"Cannot share param '{name}' owned by layer "
                                            f"'{self._layer_names[owner_layer_id]}' with layer '{lp.name}'; "
                                            f"shape mismatch.  Owner layer param shape is "
                                            f"{cm.shape_string(owner_blob.shape)}; sharing layer expects shape "
                                            f"{cm.shape_string(mine.shape)}")
        if owner_blob.shape == mine.shape:
            layer.blobs[p] = owner_blob
        else:
            mine.share_data(owner_blob, mine.shape)
            mine.share_diff(owner_blob, mine.shape)
        li = self._learnable_of[owner_id]
        self._learnable_of.append(li)
        if spec.HasField("lr_mult"):
            if self._has_params_lr[li]:
                if self.params_lr[li] != spec.lr_mult:
                    raise CaffeUnstableError(where, f"Shared param '{name}' has mismatched lr_mult.")
            else:
                self._has_params_lr[li] = True
                self.params_lr[li] = spec.lr_mult
        if spec.HasField("decay_mult"):
            if self._has_params_decay[li]:
                if self.params_weight_decay[li] != spec.decay_mult:
                    raise CaffeUnstableError(where, f"Shared param '{name}' has mismatched decay_mult.")
            else:
                self._has_params_decay[li] = True
                self.params_weight_decay[li] = spec.decay_mult

    def _analyze_backward(self, param):
        under_loss, skip_backp = set(), set()
        names = self._blob_names
        for i in range(len(self.layers) - 1, -1, -1):
            contributes, skip = False, True
            for j, tid in enumerate(self._top_ids[i]):
                if self._loss_weights[i][j] or names[tid] in under_loss:
                    contributes = True
                if names[tid] not in skip_backp:
                    skip = False
                if contributes and not skip:
                    break
            if self._layer_need_backward[i] and skip:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(self._bottom_need_backward[i])
            if not contributes:
                self._layer_need_backward[i] = False
            verb = "needs" if self._layer_need_backward[i] else "does not need"
            self.log.info(f"{self._layer_names[i]} {verb} backward computation.",
                          "net.cpp:200" if self._layer_need_backward[i] else "net.cpp:202")
            for j, bid in enumerate(self._bottom_ids[i]):
                if contributes:
                    under_loss.add(names[bid])
                else:
                    self._bottom_need_backward[i][j] = False
                if not self._bottom_need_backward[i][j]:
                    skip_backp.add(names[bid])
        self._force_backward = bool(param.force_backward)
        if param.force_backward:
            for i, layer in enumerate(self.layers):
                self._layer_need_backward[i] = True
                for j, bid in enumerate(self._bottom_ids[i]):
                    nb = self._bottom_need_backward[i][j] or layer.allow_force_backward(j)
                    self._bottom_need_backward[i][j] = nb
                    self._blob_need_backward[bid] = self._blob_need_backward[bid] or nb
                layer.param_propagate_down = [True] * len(layer.blobs)

    # ------------------------------------------------------------------------ forward and backward
    def _bottoms(self, i):
        return [self._blob_list[b] for b in self._bottom_ids[i]]

    def _tops(self, i):
        return [self._blob_list[t] for t in self._top_ids[i]]

    def forward_from_to(self, start, end):
        """Net::ForwardFromTo: run layers start..end inclusive; return the weighted loss (float32 sums)."""
        loss = np.float32(0)
        if self.accel is not None and start == 0:
            self._begin_accel_pass()
        for i in range(start, end + 1):
            layer = self.layers[i]
            bottom, top = self._bottoms(i), self._tops(i)
            layer.reshape(bottom, top)
            if self.accel is not None and accel_bridge.runs(self, i):
                accel_bridge.forward(self, i, bottom, top)
            else:
                layer.forward(bottom, top)
            for j, w in enumerate(self._loss_weights[i]):
                if w:
                    top[j].diff[...] = w  # Caffe keeps the weight in the loss top's diff
                    loss += np.float32(w) * np.float32(top[j].data.sum(dtype=np.float32))
        return float(loss)

    def _begin_accel_pass(self):
        """A new fault plan per forward (faults.md §3.1): the key a solver set, else (the net's phase, 0, a
        counter of this net's forwards)."""
        key = self.fault_key
        if key is None:
            key = (1 if self.phase == TEST else 0, 0, self._forward_count)
            self._forward_count += 1
        self.accel.begin_pass(*key)

    def backward_from_to(self, start, end):
        """Net::BackwardFromTo: layers start down to end, only those that need backward."""
        for i in range(start, end - 1, -1):
            if self._layer_need_backward[i]:
                if self.accel is not None and accel_bridge.runs(self, i):
                    accel_bridge.backward(self, i, self._tops(i), self._bottom_need_backward[i], self._bottoms(i))
                else:
                    self.layers[i].backward(self._tops(i), self._bottom_need_backward[i], self._bottoms(i))

    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    def forward_prefilled(self):
        return self.forward_from_to(0, len(self.layers) - 1)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe Net.forward: returns {output: data} (or the tops of `end`) plus `blobs`."""
        blobs = list(blobs or [])
        start_ind = self._layer_names.index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_names.index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise Exception("Input blob arguments do not match net inputs.")
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise Exception("Input is not batch sized")
                self.blobs[name].data[...] = value
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe Net.backward: returns {input: diff} (or the bottoms of `end`) plus `diffs`."""
        diffs = list(diffs or [])
        start_ind = self._layer_names.index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_names.index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise Exception("Top diff arguments do not match net outputs.")
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise Exception("Diff is not batch sized")
                self.blobs[name].diff[...] = value
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def forward_backward(self):
        loss = self.forward_prefilled()
        self.backward_from_to(len(self.layers) - 1, 0)
        return loss

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe Net.forward_all: run whole batches over the inputs, padding the last; concatenated outputs."""
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            outs = self.forward(blobs=blobs, **batch)
            for out, value in outs.items():
                all_outs[out].extend(value.copy())
        pad = len(next(iter(all_outs.values()))) - len(next(iter(kwargs.values()))) if kwargs else 0
        for out in all_outs:
            all_outs[out] = np.asarray(all_outs[out])
            if pad:
                all_outs[out] = all_outs[out][:-pad]
        return all_outs

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        all_outs = {out: [] for out in set(self.outputs + list(blobs or []))}
        all_diffs = {d: [] for d in set(self.inputs + list(diffs or []))}
        forward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.inputs})
        backward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.outputs})
        for fb, bb in zip(forward_batches, backward_batches):
            for out, v in self.forward(blobs=blobs, **fb).items():
                all_outs[out].extend(v.copy())
            for d, v in self.backward(diffs=diffs, **bb).items():
                all_diffs[d].extend(v.copy())
        return ({k: np.asarray(v) for k, v in all_outs.items()}, {k: np.asarray(v) for k, v in all_diffs.items()})

    def _batch(self, blobs):
        num = len(next(iter(blobs.values()))) if blobs else 0
        batch_size = next(iter(self.blobs.values())).shape[0]
        remainder = num % batch_size
        num_batches = num // batch_size
        for b in range(num_batches):
            i = b * batch_size
            yield {name: blobs[name][i:i + batch_size] for name in blobs}
        if remainder > 0:
            padded = {}
            for name in blobs:
                pad_shape = (batch_size - remainder,) + tuple(blobs[name].shape[1:])
                padded[name] = np.concatenate([blobs[name][-remainder:], np.zeros(pad_shape, blobs[name].dtype)])
            yield padded
        if num == 0:
            return

    def reshape(self):
        for i, layer in enumerate(self.layers):
            layer.reshape(self._bottoms(i), self._tops(i))

    def clear_param_diffs(self):
        for blob in self.learnable_params:
            blob.clear_diff()

    def update(self):
        """Net::Update: data -= diff for every learnable param."""
        for blob in self.learnable_params:
            blob.data[...] -= blob.diff

    # ------------------------------------------------------------------------------------ weights
    def copy_from(self, weights):
        """Net::CopyTrainedLayersFrom for one or more comma-free paths; binary or HDF5 by content."""
        path = os.fspath(weights)
        for source in cm.read_weights(path, self.log):
            self._copy_layer(source, path)

    def _copy_layer(self, source, path):
        try:
            target_id = self._layer_names.index(source.name)
        except ValueError:
            self.log.info(f"Ignoring source layer {source.name}", "net.cpp:801" if source.hdf5 else "net.cpp:746")
            return
        layer = self.layers[target_id]
        targets = layer.blobs
        where = f"{path} layer '{source.name}'"
        if (len(source.blobs) > len(targets)) if source.hdf5 else (len(source.blobs) != len(targets)):
            raise CaffeUnstableError(where, f"Incompatible number of blobs for layer {source.name} "
                                            f"(file has {len(source.blobs)}, net has {len(targets)})")
        for j, target in enumerate(targets):
            src = source.blobs[j] if j < len(source.blobs) else None
            if src is None:
                net_id = self._net_param_index(target_id, j)
                if self._param_owner[net_id] != -1:
                    continue
                raise CaffeUnstableError(where, f"Incompatible number of blobs for layer {source.name} "
                                                f"(dataset '{j}' missing)")
            if not _shape_equals(target.shape, src.array.shape, src.legacy):
                raise CaffeUnstableError(where, f"Cannot copy param {j} weights from layer "
                                               f"'{source.name}'; shape mismatch.  Source param shape is "
                                               f"{cm.shape_string(src.array.shape)}; target param shape is "
                                               f"{cm.shape_string(target.shape)}. To learn this layer's parameters "
                                               "from scratch rather than copying from a saved net, rename the layer.")
            target.data[...] = src.array.reshape(target.shape)
            if src.diff is not None:
                target.diff[...] = src.diff.reshape(target.shape)

    def _net_param_index(self, layer_id, p):
        return self._param_layer.index((layer_id, p))

    def load_hdf5(self, path):
        path = os.fspath(path)
        for source in cm.read_hdf5_weights(path):
            self._copy_layer(source, path)

    def share_with(self, other):
        """Net::ShareTrainedLayersWith: share param memory with `other` by layer name."""
        for name, src_layer in zip(other._layer_names, other.layers):
            if name not in self._layer_names:
                continue
            layer = self.layers[self._layer_names.index(name)]
            if len(layer.blobs) != len(src_layer.blobs):
                raise CaffeUnstableError(f"layer '{name}'", f"Incompatible number of blobs for layer {name}")
            for j, src in enumerate(src_layer.blobs):
                if layer.blobs[j].shape != src.shape:
                    raise CaffeUnstableError(f"layer '{name}'", f"Cannot share param {j} weights from layer "
                                                                f"'{name}'; shape mismatch.")
                layer.blobs[j] = src

    def to_proto(self, write_diff=False):
        """Net::ToProto: name + every layer (Splits included) with its blobs in the current format."""
        out = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            lp.ClearField("blobs")
            for blob in layer.blobs:
                lp.blobs.add().MergeFromString(cm.blob_proto_bytes(blob.data, blob.diff if write_diff else None))
        return out

    def save(self, path, write_diff=False):
        cm.write_binary_proto(path, self.to_proto(write_diff))

    def save_hdf5(self, path, write_diff=False):
        layers = []
        for i, layer in enumerate(self.layers):
            blobs = []
            for j, blob in enumerate(layer.blobs):
                owned = self._param_owner[self._net_param_index(i, j)] == -1
                blobs.append((j, blob.data, blob.diff, owned))
            layers.append((self._layer_names[i], blobs))
        cm.write_hdf5_weights(path, layers, write_diff)

    def set_input_arrays(self, data, labels):
        layer = self.layers[0]
        if layer.type != "MemoryData":
            raise CaffeUnstableError(f"layer '{self._layer_names[0]}'", "set_input_arrays may only be called if "
                                                                       "the first layer is a MemoryData layer")
        layer.reset(data, labels)

    # ----------------------------------------------------------------------------- pycaffe views
    @property
    def blobs(self):
        return OrderedDict(zip(self._blob_names, self._blob_list))

    @property
    def params(self):
        return OrderedDict((n, l.blobs) for n, l in zip(self._layer_names, self.layers) if len(l.blobs))

    @property
    def layer_dict(self):
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def blob_loss_weights(self):
        weights = OrderedDict((n, 0.0) for n in self._blob_names)
        for i in range(len(self.layers)):
            for j, tid in enumerate(self._top_ids[i]):
                weights[self._blob_names[tid]] = self._loss_weights[i][j]
        return weights

    @property
    def top_names(self):
        return OrderedDict((n, [self._blob_names[t] for t in ids]) for n, ids in zip(self._layer_names, self._top_ids))

    @property
    def bottom_names(self):
        return OrderedDict((n, [self._blob_names[b] for b in ids])
                           for n, ids in zip(self._layer_names, self._bottom_ids))

    @property
    def inputs(self):
        return [self._blob_names[i] for i in self._input_ids]

    @property
    def outputs(self):
        return list(self._outputs)

    @property
    def _blobs(self):
        return list(self._blob_list)

    @property
    def layer_need_backward(self):
        return list(self._layer_need_backward)

    @property
    def bottom_need_backward(self):
        return [list(b) for b in self._bottom_need_backward]


def _shape_equals(target, source, legacy):
    """Blob::ShapeEquals: a legacy 4-D source is compared right-aligned with the target padded by 1s."""
    if legacy:
        if len(target) > 4:
            return False
        padded = (1,) * (4 - len(target)) + tuple(target)
        return padded == tuple(source)
    return tuple(target) == tuple(source)
