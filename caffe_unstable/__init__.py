"""caffe_unstable: `import caffe_unstable as caffe` in place of pycaffe.

The pycaffe surface only (interface.md): Net, TRAIN/TEST, NetSpec, layers, params, to_proto, io,
layer_type_list, set_random_seed, set_mode_cpu/set_mode_gpu/set_device (no-ops), Layer (Python layers).
"""
from . import accel, io  # noqa: F401
from .net.net import TEST, TRAIN, Net, set_random_seed  # noqa: F401
from .net_spec import NetSpec, layers, params, to_proto  # noqa: F401
from .ops import layer_type_list  # noqa: F401
from .ops.python_layer import PyLayer as Layer  # noqa: F401
from .proto import caffe_pb2  # noqa: F401
from .solvers import (  # noqa: F401
    AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver, get_solver,
)
from . import proto  # noqa: F401

__version__ = "0.1.0"


def set_mode_cpu():
    """pycaffe compatibility: caffe_unstable always computes on the CPU (or the chosen accelerator)."""


def set_mode_gpu():
    """pycaffe compatibility: kept so that scripts run; computation stays on the CPU/accelerator."""


def set_device(device_id):
    """pycaffe compatibility: no-op."""


def init_log(*args, **kwargs):
    """pycaffe compatibility: no-op (logging goes to stderr in glog format)."""
