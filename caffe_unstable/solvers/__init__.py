"""Caffe's solvers, registered by their type string (solver_factory.hpp), and pycaffe's get_solver.

An explicit table, so this file is also the index of what exists: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta,
Adam (caffe.md §4).
"""
import os

from ..errors import CaffeUnstableError
from ..io import prototxt as pt
from ..proto import caffe_pb2
from .adadelta import AdaDeltaSolver
from .adagrad import AdaGradSolver
from .adam import AdamSolver
from .base import Solver, field_lines
from .nesterov import NesterovSolver
from .rmsprop import RMSPropSolver
from .sgd import SGDSolver

_REGISTRY = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                                       AdamSolver)}

__all__ = ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver", "get_solver", "create_solver", "solver_class", "register", "solver_type_list"]


def register(cls):
    """Register a Solver subclass under `cls.type`; a name may be registered once."""
    if cls.type in _REGISTRY:
        raise ValueError(f"Solver type {cls.type} already registered.")
    _REGISTRY[cls.type] = cls
    return cls


def solver_type_list():
    return sorted(_REGISTRY)


def solver_class(type_name, where=""):
    """The class registered for a Caffe solver type (case-sensitive, as SolverRegistry)."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise CaffeUnstableError(where, f"Unknown solver type: {type_name} (known types: "
                                        f"{', '.join(solver_type_list())})") from None


def get_solver(solver_file, accel=None, log=None, source=None):
    """pycaffe's caffe.get_solver: the solver class named by the file's `type` (SGD when unset).

    `solver_file` is a solver prototxt path or a caffe_pb2.SolverParameter (`source` then names it in errors).
    """
    if isinstance(solver_file, caffe_pb2.SolverParameter):
        return create_solver(solver_file, source, accel=accel, log=log)
    path = os.fspath(solver_file)
    return create_solver(pt.read_solver_text(path, log), path, accel=accel, log=log)


def create_solver(param, source=None, accel=None, log=None):
    """SolverRegistry::CreateSolver: the class registered for `param.type`, built from `param`."""
    where = os.fspath(source) if source is not None else "<SolverParameter>"
    cls = solver_class(param.type, _type_where(where))
    return cls(param, accel=accel, log=log, source=source)


def _type_where(where):
    """`<file>:<line>` of the top-level type (or solver_type) field when the file spells it."""
    lines = field_lines(where)
    line = lines.get("type") or lines.get("solver_type")
    return f"{where}:{line}" if line else where
