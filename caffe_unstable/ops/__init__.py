"""Caffe's layers, registered by their Caffe type name (layer_factory.hpp).

Importing a module registers its layers; this explicit list is the index of every layer family.
"""
from .base import Layer, layer_class, layer_type_list, register  # noqa: F401
from . import (  # noqa: F401  (imported for registration)
    accuracy,
    batch_norm,
    conv,
    data,
    eltwise,
    inner_product,
    loss,
    lrn,
    mvn,
    neuron,
    pooling,
    python_layer,
    reduction,
    scale,
    shape,
    softmax,
)
