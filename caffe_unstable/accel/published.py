"""PipeCNN's published precision tables (layer_config.h; pipecnn.md §5.2-§5.3), ready to use as quant tables.

`alexnet` serves BVLC AlexNet and CaffeNet (conv1..conv5, fc6..fc8), `vgg16` the VGG-16 layer names
(conv1_1..conv5_3, fc6..fc8; upstream stores fc6-fc8 weights in 4 bits, §5.3). Both reproduce PipeCNN exactly.
"""
from .quant import LayerFormat
from .quant_table import QuantTable

ALEXNET = {   # (frac_w, frac_din, frac_dout); upstream's chain-consistent table (§5.2), not ICT's fc6-fc8
    "conv1": (8, 0, -4), "conv2": (8, 0, -2), "conv3": (8, 0, -1), "conv4": (8, -1, -1), "conv5": (8, -1, -1),
    "fc6": (11, -1, 0), "fc7": (10, 0, 2), "fc8": (10, 2, 2),
}

VGG16 = {
    "conv1_1": (7, 0, -2), "conv1_2": (8, -2, -5), "conv2_1": (8, -5, -5), "conv2_2": (8, -5, -6),
    "conv3_1": (7, -6, -7), "conv3_2": (8, -7, -7), "conv3_3": (8, -7, -7), "conv4_1": (8, -7, -6),
    "conv4_2": (8, -6, -5), "conv4_3": (8, -5, -5), "conv5_1": (9, -5, -4), "conv5_2": (9, -4, -3),
    "conv5_3": (8, -3, -2), "fc6": (8, -2, 0, 4), "fc7": (7, 0, 2, 4), "fc8": (7, 2, 2, 4),
}

TABLES = {"alexnet": ("bvlc_alexnet", ALEXNET), "vgg16": ("VGG_ILSVRC_16_layers", VGG16)}


def names():
    return sorted(TABLES)


def table(name, only=None):
    """The published table `name` ("alexnet", "vgg16") as a QuantTable; `only` keeps the entries whose names are
    in it (a VGG-16 deploy net that stops at pool5 has no fc6-fc8)."""
    net, rows = TABLES[name]
    layers = {k: LayerFormat(*v) for k, v in rows.items() if only is None or k in only}
    return QuantTable(layers, net=net, path=f"<PipeCNN {name} table>",
                      comments=[f"PipeCNN's published {name} precision table (layer_config.h, pipecnn.md §5)"])


def match(layer_names):
    """The published table whose names cover every conv/FC name of a net (e.g. CaffeNet), or None."""
    wanted = set(layer_names)
    for name, (_, rows) in TABLES.items():
        if wanted and wanted <= set(rows):
            return name
    return None
