"""YAML with line numbers: PyYAML's safe_load semantics, keeping each value's 1-based line (faults.md §7.2)."""
import yaml

from ...errors import CaffeUnstableError


class Doc:
    """A loaded YAML document: `value` (plain Python data) and `lines` {dotted path: line}."""

    def __init__(self, value, lines):
        self.value, self.lines = value, lines

    def line(self, path):
        """Line of the value at `path`, else of its nearest existing parent (a missing key's mapping), else 1."""
        while path and path not in self.lines:
            path = parent(path)
        return self.lines.get(path, 1)


def parent(path):
    """'a.b' -> 'a', 'a[1]' -> 'a', 'a[1].c' -> 'a[1]', 'a' -> ''."""
    if path.endswith("]"):
        return path[:path.rindex("[")]
    return path[:path.rindex(".")] if "." in path else ""


def _walk(node, path, lines, loader, line=None):
    lines[path] = line or node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise CaffeUnstableError(None, f"{key_node.start_mark.line + 1}: {path or 'top level'}: keys must "
                                               f"be strings or integers, got {key!r}")
            child = f"{path}.{key}" if path else key
            out[key] = _walk(value_node, child, lines, loader, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, f"{path}[{i}]", lines, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load(path):
    """Doc of the YAML file at `path`; a syntax error is one line `FILE:LINE: yaml: problem`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Doc({}, {"": 1})
        lines = {}
        return Doc(_walk(node, "", lines, loader), lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise CaffeUnstableError(f"{path}:{line}", f"yaml: {getattr(exc, 'problem', None) or exc}") from None
    except CaffeUnstableError as exc:
        line, what = exc.what.split(": ", 1)
        raise CaffeUnstableError(f"{path}:{line}", what) from None
    finally:
        loader.dispose()
