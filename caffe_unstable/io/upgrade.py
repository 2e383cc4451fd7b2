"""Caffe's UpgradeNetAsNeeded / UpgradeSolverAsNeeded (util/upgrade_proto.cpp), as pure proto transforms.

Order (caffe.md §1.4): V0 -> V1 (padding layers folded), V1 data-transformation fields, V1 -> current,
legacy input fields -> Input layer, BatchNorm ParamSpecs.
"""
import os

from ..errors import CaffeUnstableError
from ..proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V0 type string -> V1 enum (upgrade_proto.cpp UpgradeV0LayerType)
V0_TYPES = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS, "flatten": V1.FLATTEN,
    "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT, "im2col": V1.IM2COL, "images": V1.IMAGE_DATA,
    "infogain_loss": V1.INFOGAIN_LOSS, "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING, "relu": V1.RELU,
    "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX, "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT,
    "tanh": V1.TANH, "window_data": V1.WINDOW_DATA,
}

# V1 enum -> current type string (UpgradeV1LayerType)
V1_TYPES = {
    V1.NONE: "", V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.DATA: "Data", V1.DECONVOLUTION: "Deconvolution", V1.DROPOUT: "Dropout", V1.DUMMY_DATA: "DummyData",
    V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise", V1.EXP: "Exp", V1.FLATTEN: "Flatten",
    V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output", V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col",
    V1.IMAGE_DATA: "ImageData", V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct",
    V1.LRN: "LRN", V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN", V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU", V1.SIGMOID: "Sigmoid",
    V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax",
    V1.SOFTMAX_LOSS: "SoftmaxWithLoss", V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH",
    V1.WINDOW_DATA: "WindowData", V1.THRESHOLD: "Threshold",
}

SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def _note(log, what, where):
    if log is not None:
        log.info(f"Attempting to upgrade input file specified using deprecated {what}: {where}", "upgrade_proto.cpp:67")
        log.info(f"Successfully upgraded file specified using deprecated {what}", "upgrade_proto.cpp:70")


# ---------------------------------------------------------------------------------------- V0 -> V1
def _fold_padding_layers(net, where):
    """V0 'padding' layers are removed; their pad moves into the consuming conv/pool (UpgradeV0PaddingLayers)."""
    pads = {}  # padding top -> (padding bottom, pad)
    kept = []
    for v1 in net.layers:
        v0 = v1.layer
        if v0.type == "padding":
            if len(v1.bottom) != 1 or len(v1.top) != 1:
                raise CaffeUnstableError(where, f"padding layer '{v0.name}' must have one bottom and one top")
            pads[v1.top[0]] = (v1.bottom[0], v0.pad)
            continue
        for j, b in enumerate(v1.bottom):
            if b in pads:
                if v0.type not in ("conv", "pool") or len(v1.bottom) != 1:
                    raise CaffeUnstableError(where, f"Padding layer input to non-convolutional / non-pooling layer "
                                                    f"type {v0.type}")
                v1.bottom[j], pad = pads[b]
                v0.pad = pad
        kept.append(v1)
    if len(kept) != len(net.layers):
        copies = [type(v)() for v in kept]
        for c, v in zip(copies, kept):
            c.CopyFrom(v)
        del net.layers[:]
        net.layers.extend(copies)


def _v0_to_v1_layer(v1, where):
    v0 = v1.layer
    t = v0.type
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if t not in V0_TYPES:
            raise CaffeUnstableError(where, f"Unknown layer name: {t}")
        out.type = V0_TYPES[t]
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def wrong(field):
        raise CaffeUnstableError(where, f"Unknown parameter {field} for layer type {t} (layer '{v0.name}')")

    def has(f):
        return v0.HasField(f)

    if has("num_output"):
        if t not in ("conv", "innerproduct"):
            wrong("num_output")
        (out.convolution_param if t == "conv" else out.inner_product_param).num_output = v0.num_output
    if has("biasterm"):
        if t not in ("conv", "innerproduct"):
            wrong("biasterm")
        (out.convolution_param if t == "conv" else out.inner_product_param).bias_term = v0.biasterm
    for f in ("weight_filler", "bias_filler"):
        if has(f):
            if t not in ("conv", "innerproduct"):
                wrong(f)
            getattr(out.convolution_param if t == "conv" else out.inner_product_param, f).CopyFrom(getattr(v0, f))
    if has("pad"):
        if t == "conv":
            out.convolution_param.pad.append(v0.pad)
        elif t == "pool":
            out.pooling_param.pad = v0.pad
        else:
            wrong("pad")
    if has("kernelsize"):
        if t == "conv":
            out.convolution_param.kernel_size.append(v0.kernelsize)
        elif t == "pool":
            out.pooling_param.kernel_size = v0.kernelsize
        else:
            wrong("kernelsize")
    if has("group"):
        if t != "conv":
            wrong("group")
        out.convolution_param.group = v0.group
    if has("stride"):
        if t == "conv":
            out.convolution_param.stride.append(v0.stride)
        elif t == "pool":
            out.pooling_param.stride = v0.stride
        else:
            wrong("stride")
    if has("pool"):
        if t != "pool":
            wrong("pool")
        out.pooling_param.pool = v0.pool
    if has("dropout_ratio"):
        if t != "dropout":
            wrong("dropout_ratio")
        out.dropout_param.dropout_ratio = v0.dropout_ratio
    for f in ("local_size", "alpha", "beta", "k"):
        if has(f):
            if t != "lrn":
                wrong(f)
            setattr(out.lrn_param, f, getattr(v0, f))
    source_params = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                     "window_data": "window_data_param", "infogain_loss": "infogain_loss_param"}
    batch_params = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
                    "window_data": "window_data_param"}
    if has("source"):
        if t not in source_params:
            wrong("source")
        getattr(out, source_params[t]).source = v0.source
    if has("batchsize"):
        if t not in batch_params:
            wrong("batchsize")
        getattr(out, batch_params[t]).batch_size = v0.batchsize
    for f, g in (("scale", "scale"), ("meanfile", "mean_file"), ("cropsize", "crop_size"), ("mirror", "mirror")):
        if has(f):
            if t not in ("data", "images", "window_data"):
                wrong(f)
            setattr(out.transform_param, g, getattr(v0, f))
    if has("rand_skip"):
        if t not in ("data", "images"):
            wrong("rand_skip")
        getattr(out, batch_params[t]).rand_skip = v0.rand_skip
    for f, g in (("shuffle_images", "shuffle"), ("new_height", "new_height"), ("new_width", "new_width")):
        if has(f):
            if t != "images":
                wrong(f)
            setattr(out.image_data_param, g, getattr(v0, f))
    if has("concat_dim"):
        if t != "concat":
            wrong("concat_dim")
        out.concat_param.concat_dim = v0.concat_dim
    for f, g in (("det_fg_threshold", "fg_threshold"), ("det_bg_threshold", "bg_threshold"),
                 ("det_fg_fraction", "fg_fraction"), ("det_context_pad", "context_pad"),
                 ("det_crop_mode", "crop_mode")):
        if has(f):
            if t != "window_data":
                wrong(f)
            setattr(out.window_data_param, g, getattr(v0, f))
    if has("hdf5_output_param"):
        if t != "hdf5_output":
            wrong("hdf5_output_param")
        out.hdf5_output_param.CopyFrom(v0.hdf5_output_param)
    return out


def _upgrade_v0(net, where):
    _fold_padding_layers(net, where)
    upgraded = [_v0_to_v1_layer(v1, where) if v1.HasField("layer") else v1 for v1 in net.layers]
    copies = []
    for u in upgraded:
        c = caffe_pb2.V1LayerParameter()
        c.CopyFrom(u)
        copies.append(c)
    del net.layers[:]
    net.layers.extend(copies)


# ------------------------------------------------------------------- V1 data transformation fields
_V1_DATA_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}


def _needs_data_upgrade(net):
    for v1 in net.layers:
        name = _V1_DATA_PARAMS.get(v1.type)
        if name and v1.HasField(name):
            p = getattr(v1, name)
            if any(p.HasField(f) for f in ("scale", "mean_file", "crop_size", "mirror")):
                return True
    return False


def _upgrade_data_transformation(net):
    for v1 in net.layers:
        name = _V1_DATA_PARAMS.get(v1.type)
        if not name or not v1.HasField(name):
            continue
        p = getattr(v1, name)
        for f in ("scale", "mean_file", "crop_size", "mirror"):
            if p.HasField(f):
                setattr(v1.transform_param, f, getattr(p, f))
                p.ClearField(f)


# ---------------------------------------------------------------------------------------- V1 -> new
def _v1_to_layer(v1, where):
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPES.get(v1.type, "")
    layer.blobs.extend(v1.blobs)
    n = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    layer.loss_weight.extend(v1.loss_weight)
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param") and fd.message_type is not None:
            getattr(layer, fd.name).CopyFrom(value)
    if v1.HasField("layer"):
        raise CaffeUnstableError(where, f"Input NetParameter has V0 layer -- ignoring (layer '{v1.name}')")
    return layer


def _upgrade_v1(net, where):
    if len(net.layer):
        raise CaffeUnstableError(where, "Refusing to upgrade inconsistent NetParameter input; the definition "
                                        "includes both 'layer' and 'layers' fields. The current format defines "
                                        "'layer' fields with string type like layer { type: 'Layer' ... } and not "
                                        "layers { type: LAYER ... }. Manually switch the definition to 'layer' "
                                        "format to continue.")
    new_layers = [_v1_to_layer(v1, where) for v1 in net.layers]
    net.ClearField("layers")
    net.layer.extend(new_layers)


# ------------------------------------------------------------------------------------ input fields
def _upgrade_input(net, where):
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                if i >= len(net.input_shape):
                    raise CaffeUnstableError(where, f"input '{name}' has no input_shape")
                shape.CopyFrom(net.input_shape[i])
            else:
                dims = net.input_dim[4 * i:4 * i + 4]
                if len(dims) != 4:
                    raise CaffeUnstableError(where, "input_dim must give 4 values per input")
                shape.dim.extend(dims)
        rest = list(net.layer)
        del net.layer[:]
        net.layer.append(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def upgrade_net_as_needed(net, where="", log=None):
    """Apply every needed upgrade in Caffe's order, in place; return `net`."""
    if any(v1.HasField("layer") for v1 in net.layers):
        _note(log, "V0LayerParameter", where)
        _upgrade_v0(net, where)
    if _needs_data_upgrade(net):
        _note(log, "transformation parameters", where)
        _upgrade_data_transformation(net)
    if len(net.layers):
        _note(log, "V1LayerParameter", where)
        _upgrade_v1(net, where)
    if len(net.input):
        _note(log, "input fields", where)
        if log is not None:
            log.warning("Note that future Caffe releases will only support input layers and not input fields.",
                        "upgrade_proto.cpp:80")
        _upgrade_input(net, where)
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return net


def upgrade_solver_as_needed(solver, where="", log=None):
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise CaffeUnstableError(where, "Failed to upgrade solver: old solver_type field (enum) and new type "
                                            "field (string) cannot be both specified.")
        _note(log, "solver type", where)
        solver.type = SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
    if where:
        stem = os.path.splitext(where)[0]
        if not solver.HasField("snapshot_prefix"):
            solver.snapshot_prefix = stem
        elif os.path.isdir(solver.snapshot_prefix):
            solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, os.path.basename(stem))
    return solver
