"""Deploy-style nets: a train/test prototxt with its data layers replaced by Input layers, as Caffe's
deploy.prototxt files are written by hand. A pure NetParameter transform (like graph.py's), used to run chosen
inputs (canaries, faults.md §9) through a model without its data source.
"""
from ..errors import CaffeUnstableError
from ..proto import caffe_pb2


def data_layers_to_inputs(param, shapes):
    """A copy of `param` in which every layer without bottoms (Data, ImageData, HDF5Data, Input, ...) becomes an
    Input layer of the same name, tops and include/exclude rules; `shapes` maps each of those tops to its shape
    (a list of ints). Every other layer is copied unchanged."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    for layer in param.layer:
        if len(layer.bottom):
            out.layer.add().CopyFrom(layer)
            continue
        missing = [t for t in layer.top if t not in shapes]
        if missing:
            raise CaffeUnstableError(f"layer '{layer.name}'", f"no input shape for its top '{missing[0]}'")
        new = out.layer.add()
        new.name, new.type = layer.name, "Input"
        new.top.extend(layer.top)
        new.include.extend(layer.include)
        new.exclude.extend(layer.exclude)
        for top in layer.top:
            new.input_param.shape.add().dim.extend(int(d) for d in shapes[top])
    return out


def data_layers_to_image_list(param, source, root_folder="", max_batch=None, gray=False):
    """A copy of `param` in which every TEST-phase data layer with two tops (data, label) reads the image list
    `source` (Caffe's `path label` lines) through an ImageData layer, keeping its name, tops, include/exclude
    rules and transform_param (crop, mean, scale, mirror): the same preprocessing applied to other images.
    Batches are at most `max_batch` images; `gray` decodes one channel."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    changed = 0
    for layer in param.layer:
        new = out.layer.add()
        new.CopyFrom(layer)
        if len(layer.bottom) or len(layer.top) != 2 or layer.type == "Input":
            continue
        batch = min(_batch_size(layer), max_batch or _batch_size(layer))
        new.ClearField("type")
        for field in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param", "window_data_param",
                      "dummy_data_param"):
            new.ClearField(field)
        new.type = "ImageData"
        new.image_data_param.source = str(source)
        new.image_data_param.root_folder = str(root_folder)
        new.image_data_param.batch_size = int(batch)
        new.image_data_param.is_color = not gray
        changed += 1
    if not changed:
        raise CaffeUnstableError("--images", "the net has no data layer with a data and a label top to read the "
                                             "image list through")
    return out


def _batch_size(layer):
    for field in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param"):
        if layer.HasField(field) and getattr(layer, field).batch_size:
            return getattr(layer, field).batch_size
    return 1
