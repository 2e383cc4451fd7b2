"""The quantisation table `*.quant.yaml` (pipecnn.md §10.5): one LayerFormat per accelerated conv/FC layer.

    format: caffe_unstable.quant/1
    net: bvlc_reference_caffenet              # informational
    layers:
      conv1: {frac_w: 8, frac_din: 0, frac_dout: -4}
      fc8:   {frac_w: 10, frac_din: 2, frac_dout: 2, w_bits: 8}     # w_bits optional (default 8)

Checks that need only the file happen here (one line naming the file, its line and the layer); the checks that need
the net (a missing or extra entry, m with a bias, the frac_din chain) happen when a net is attached
(net/accel_bridge.py).
"""
import json
import os

import yaml

from ..errors import CaffeUnstableError
from .quant import LayerFormat

FORMAT = "caffe_unstable.quant/1"
KEYS = ("frac_w", "frac_din", "frac_dout", "w_bits")
_REQUIRED = KEYS[:3]


class QuantTable:
    """name -> LayerFormat, in file order, with the file and line of each entry for error messages."""

    def __init__(self, layers, net=None, path=None, lines=None, comments=()):
        self.layers = dict(layers)
        self.net = net
        self.path = path
        self.lines = dict(lines or {})
        self.comments = list(comments)

    def __contains__(self, name):
        return name in self.layers

    def __getitem__(self, name):
        return self.layers[name]

    def __eq__(self, other):
        return isinstance(other, QuantTable) and self.layers == other.layers and self.net == other.net

    def where(self, name=None):
        """'<file>:<line>' of an entry (or of the file), for CaffeUnstableError."""
        path = self.path or "<quant table>"
        line = self.lines.get(name) if name is not None else None
        return f"{path}:{line}" if line else path

    def replace(self, **formats):
        """A copy with some entries replaced (name=LayerFormat)."""
        layers = dict(self.layers)
        layers.update(formats)
        return QuantTable(layers, self.net, self.path, self.lines, self.comments)

    # -- reading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise CaffeUnstableError(path, "no such quantization table") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CaffeUnstableError(path, f"cannot read: {exc}") from None
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text, path="<quant table>"):
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            raise CaffeUnstableError(where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(root, yaml.MappingNode):
            raise CaffeUnstableError(path, f"expected a mapping with 'format' and 'layers' ({FORMAT})")
        top = {k.value: v for k, v in root.value}
        fmt = top.get("format")
        if fmt is None or _scalar(fmt) != FORMAT:
            line = fmt.start_mark.line + 1 if fmt is not None else 1
            got = repr(_scalar(fmt)) if fmt is not None else "nothing"
            raise CaffeUnstableError(f"{path}:{line}", f"format: expected '{FORMAT}', got {got}")
        unknown = sorted(set(top) - {"format", "net", "layers"})
        if unknown:
            node = next(k for k, _ in root.value if k.value == unknown[0])
            raise CaffeUnstableError(f"{path}:{node.start_mark.line + 1}",
                                     f"{unknown[0]}: unknown key (known: format, net, layers)")
        net = _scalar(top["net"]) if "net" in top else None
        layers_node = top.get("layers")
        if not isinstance(layers_node, yaml.MappingNode):
            line = layers_node.start_mark.line + 1 if layers_node is not None else 1
            raise CaffeUnstableError(f"{path}:{line}", "layers: expected a mapping: layer name -> "
                                                       "{frac_w: F, frac_din: F, frac_dout: F}")
        layers, lines = {}, {}
        for key, value in layers_node.value:
            name = str(_scalar(key))
            line = key.start_mark.line + 1
            where = f"{path}:{line}"
            if name in layers:
                raise CaffeUnstableError(where, f"layer '{name}': listed twice")
            layers[name] = _entry(value, name, where)
            lines[name] = line
        if not layers:
            raise CaffeUnstableError(f"{path}:{layers_node.start_mark.line + 1}", "layers: the table is empty")
        return cls(layers, net, path, lines)

    # -- writing -------------------------------------------------------------------------------------------
    def to_text(self, comments=None):
        comments = self.comments if comments is None else comments
        names = [_yaml_key(n) for n in self.layers]
        width = max(len(n) for n in names) + 1
        out = [f"format: {FORMAT}"]
        if self.net:
            out.append(f"net: {_yaml_key(self.net)}    # informational")
        out.append("layers:    # frac_w (weights and bias), frac_din (input), frac_dout (output); value = q 2^-F")
        for key, fmt in zip(names, self.layers.values()):
            extra = f", w_bits: {fmt.w_bits}" if fmt.w_bits != 8 else ""
            body = f"{{frac_w: {fmt.frac_w}, frac_din: {fmt.frac_din}, frac_dout: {fmt.frac_dout}{extra}}}"
            out.append(f"  {(key + ':').ljust(width)} {body.ljust(48)} # n {fmt.n}, m {fmt.m}")
        out += [f"# {c}" for c in comments]
        return "\n".join(out) + "\n"

    def dump(self, path, comments=None):
        from ..io.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(self.to_text(comments))


def _scalar(node):
    return _construct(node) if isinstance(node, yaml.ScalarNode) else None


def _construct(node):
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _entry(node, name, where):
    if not isinstance(node, yaml.MappingNode):
        raise CaffeUnstableError(where, f"layer '{name}': expected {{frac_w: F, frac_din: F, frac_dout: F}}")
    values = {}
    for k, v in node.value:
        key = k.value
        if key not in KEYS:
            raise CaffeUnstableError(f"{where.rsplit(':', 1)[0]}:{k.start_mark.line + 1}",
                                     f"layer '{name}': {key}: unknown key (known: {', '.join(KEYS)})")
        value = _construct(v)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CaffeUnstableError(where, f"layer '{name}': {key} must be an integer, got {v.value!r}")
        values[key] = value
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise CaffeUnstableError(where, f"layer '{name}': missing {', '.join(missing)}")
    fmt = LayerFormat(values["frac_w"], values["frac_din"], values["frac_dout"], values.get("w_bits", 8))
    problem = fmt.problem(has_bias=False)
    if problem:
        raise CaffeUnstableError(where, f"layer '{name}': {problem}")
    return fmt


def _yaml_key(name):
    """name as a YAML mapping key: plain when it reads back as the same string, else double-quoted."""
    try:
        if yaml.safe_load(f"{name}: 0") == {name: 0}:
            return name
    except yaml.YAMLError:
        pass
    return json.dumps(name)
