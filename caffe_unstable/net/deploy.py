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
