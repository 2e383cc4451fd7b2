"""fault_vectors.json `layers` through the package's reference loop (faults.reference_layer): the scenario's
layer dict and plan in, the int8 output, the hit map and the loop's operands out."""
import numpy as np

from caffe_unstable.accel.faults.reference_layer import operands, simulate_image  # noqa: F401


def simulate(layer, plan, widths=(32, 32, 32), n=0):
    """int8 output [O][conv_y][conv_x] of image n of a fault_vectors.json layer under a scenario plan, hit, and
    (xs, ws, S): the operands in MAC order and the int32 sums."""
    g = dict(layer["geometry"])
    g.update(zip(("width_product", "width_accumulator", "width_final"), widths))
    x = np.asarray(layer["input"], dtype=np.int8)
    w = np.asarray(layer["weights"], dtype=np.int8)
    b = np.asarray(layer["bias"], dtype=np.int8)
    return simulate_image(x, w, b, g, layer["quant"], plan, n)
