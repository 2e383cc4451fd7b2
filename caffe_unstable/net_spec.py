"""pycaffe's NetSpec (python/caffe/net_spec.py): write a NetParameter as Python calls.

    import caffe_unstable as caffe
    from caffe_unstable import layers as L, params as P

    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source="train_lmdb",
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.conv1, n.label)
    print(n.to_proto())           # a NetParameter; str() is prototxt text

`L.<Type>(*bottoms, **kwargs)` returns one Top (a tuple of `ntop` Tops, or the layer itself when ntop=0).
Keywords, as pycaffe reads them: `ntop` (default 1) and `in_place` (tops = bottoms) are consumed here; a name
ending in `param` (`param`, `transform_param`, `python_param`, ...) is a LayerParameter field; any other name goes
into the type's own `<type>_param` when that message has such a field, else into LayerParameter (`name`,
`loss_weight`, `include`, `phase`, `propagate_down`, ...). Dicts become sub-messages, lists repeated fields (a
single value for a repeated field is wrapped), and enum fields take the value or its name (`pool="MAX"`).
Layers are named after their first top: the NetSpec attribute it was assigned to, else `<Type><k>` counting per
type, as pycaffe does.
"""
from collections import Counter, OrderedDict

import numpy as np
from google.protobuf.message import Message

from .errors import CaffeUnstableError
from .proto import caffe_pb2

# Types whose `<Type>Parameter` message is named otherwise, and types that read more than one *_param
# (Caffe's loss layers read loss_param besides their own). pycaffe itself only knows the automatic rule.
_EXTRA_PARAM_FIELDS = {
    "Deconvolution": ("convolution_param",),
    "RNN": ("recurrent_param",),
    "LSTM": ("recurrent_param",),
    "SoftmaxWithLoss": ("softmax_param", "loss_param"),
}


def _param_field_by_type():
    """{"Convolution": "convolution_param", "InnerProduct": "inner_product_param", ...} from the proto."""
    table = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                table[type_name[: -len("Parameter")]] = field.name
    return table


_PARAM_FIELD = _param_field_by_type()


def param_fields(type_name):
    """The LayerParameter *_param fields that layers of `type_name` read, in the order kwargs are tried."""
    fields = list(_EXTRA_PARAM_FIELDS.get(type_name, ()))
    own = _PARAM_FIELD.get(type_name)
    if own and own not in fields:
        fields.insert(0, own)
    if type_name.endswith("Loss") and "loss_param" not in fields:
        fields.append("loss_param")
    return fields


# -- assigning Python values to proto fields -------------------------------------------------------
def _has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def _is_repeated(field):
    try:
        repeated = field.is_repeated  # protobuf >= 6; `label` is deprecated there
    except AttributeError:
        return field.label == field.LABEL_REPEATED
    return repeated() if callable(repeated) else repeated


def _scalar(field, value, where):
    """A Python value ready for `field`: enum names become numbers, NumPy scalars plain Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if field.enum_type is not None and isinstance(value, str):
        try:
            return field.enum_type.values_by_name[value].number
        except KeyError:
            names = ", ".join(field.enum_type.values_by_name)
            raise CaffeUnstableError(where, f"{field.name}: unknown value '{value}' (one of: {names})") from None
    return value


def assign_proto(message, name, value, where=""):
    """Set field `name` of `message` from a Python value, recursively (pycaffe's assign_proto)."""
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise CaffeUnstableError(where, f"{message.DESCRIPTOR.name} has no field '{name}'")
    repeated = _is_repeated(field)
    is_message = field.message_type is not None
    try:
        if repeated:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            container = getattr(message, name)
            for item in values:
                if is_message:
                    _fill_message(container.add(), item, where)
                else:
                    container.append(_scalar(field, item, where))
        elif is_message:
            _fill_message(getattr(message, name), value, where)
        else:
            setattr(message, name, _scalar(field, value, where))
    except (TypeError, ValueError) as e:
        raise CaffeUnstableError(where, f"{message.DESCRIPTOR.name}.{name}: cannot take {value!r} ({e})") from None


def _fill_message(sub, value, where):
    if isinstance(value, Message):
        sub.CopyFrom(value)
    elif isinstance(value, dict):
        sub.SetInParent()  # an empty dict still writes the sub-message, as `field {}` in text
        for k, v in value.items():
            assign_proto(sub, k, v, where)
    else:
        raise CaffeUnstableError(where, f"{sub.DESCRIPTOR.name} expects a dict, not {value!r}")


# -- the graph: Tops produced by Functions ---------------------------------------------------------
class Top:
    """The `n`-th output of a layer call; NetSpec attributes hold these."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """The NetParameter of every layer this top depends on."""
        return to_proto(self)

    def _update(self, params):
        self.fn.params.update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer call `L.<type_name>(*inputs, **params)`: becomes one LayerParameter."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(bottom).__name__})")
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottom_names.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        where = f"layer '{layer.name}'"
        for key, value in self.params.items():
            assign_proto(self._target(layer, key, where), key, value, where)
        layers[self] = layer

    def _target(self, layer, key, where):
        """The message a keyword belongs to: LayerParameter for *param names, else the type's own param."""
        if not key.endswith("param"):
            for field in param_fields(self.type_name):
                sub = getattr(layer, field)
                if _has_field(sub, key):
                    return sub
        if _has_field(layer, key):
            return layer
        own = " or ".join(param_fields(self.type_name)) or "no *_param"
        raise CaffeUnstableError(where, f"{self.type_name} has no parameter '{key}' "
                                        f"(not a field of LayerParameter; {self.type_name} reads {own})")

    def __repr__(self):
        return f"<Function {self.type_name}>"


def to_proto(*tops):
    """NetParameter of the given tops and everything they depend on; unnamed tops get `<Type><k>` names."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops: `n.conv1 = L.Convolution(n.data, ...)`; `n.to_proto()` names layers and tops after them."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__") or name == "tops":
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top '{name}'") from None

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, key):
        return self.tops[key]

    def __delitem__(self, key):
        del self.tops[key]

    def __contains__(self, key):
        return key in self.tops

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {top: name for name, top in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`L.<Type>(*bottoms, **kwargs)`: any attribute is a layer type."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args, **kwargs):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = type_name
        return layer_fn


class _Enums:
    """The enum values (and enum types) of one parameter message: `P.Pooling.MAX`, `P.Pooling.PoolMethod`."""

    def __init__(self, descriptor, message_class):
        self._descriptor = descriptor
        self._message_class = message_class

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        for enum in self._descriptor.enum_types:
            if name == enum.name:
                return getattr(self._message_class, name)
            if name in enum.values_by_name:
                return enum.values_by_name[name].number
        raise AttributeError(f"{self._descriptor.name} has no enum value '{name}' (has: {', '.join(self._names())})")

    def _names(self):
        return [v for enum in self._descriptor.enum_types for v in [enum.name, *enum.values_by_name]]

    def __dir__(self):
        return self._names()

    def __repr__(self):
        return f"<enums of {self._descriptor.name}>"


class Parameters:
    """`P.<Type>.<VALUE>`: enum values of `<Type>Parameter` (or the message the type reads, P.Deconvolution)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = getattr(caffe_pb2, name + "Parameter", None)
        if cls is None:
            fields = param_fields(name)
            if not fields:
                raise AttributeError(f"no parameter message for '{name}' (no {name}Parameter in caffe.proto)")
            field = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name[fields[0]]
            cls = getattr(caffe_pb2, field.message_type.name)
        return _Enums(cls.DESCRIPTOR, cls)


layers = Layers()
params = Parameters()
