"""cu-quantize: per-layer fixed-point formats (frac_w, frac_din, frac_dout) for the PipeCNN accelerator, chosen on
real calibration images from the model's TEST data source (pipecnn.md §10.5), written as a readable *.quant.yaml.

    cu-quantize --model lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel lenet.quant.yaml
    cu-quantize --model cifar10_quick_train_test.prototxt --weights ... --calib 1500 --refine 2 cifar.quant.yaml
    cu-quantize --model bvlc_alexnet/deploy.prototxt --published alexnet alexnet.quant.yaml
"""
import click

from ..errors import CaffeUnstableError
from . import console_logger, run


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="The net prototxt; its TEST-phase data layer supplies the calibration images and labels.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Trained weights: binary .caffemodel or HDF5 .caffemodel.h5 (not needed with --published).")
@click.option("--calib", type=click.IntRange(min=1), default=500, show_default=True,
              help="Number of calibration images read from the TEST data source.")
@click.option("--refine", type=click.IntRange(min=0), default=0, show_default=True,
              help="After PipeCNN's layer-by-layer search, up to this many passes of a coordinate search (each "
                   "layer's frac_w, frac_dout, both, and a host-fed frac_din by +-1) judged by the whole net's "
                   "top-1, top-5 and loss on the calibration images.")
@click.option("--refine-by", "--refine_by", "refine_by", type=click.Choice(["accuracy", "loss"]),
              default="accuracy", show_default=True,
              help="What a --refine move must improve: (top-1, top-5, -loss), or the mean cross-entropy alone.")
@click.option("--start", "start", type=click.Path(dir_okay=False), default=None,
              help="A *.quant.yaml for this net to start from instead of PipeCNN's layer-by-layer search (with "
                   "--refine: refine an existing table).")
@click.option("--published", type=click.Choice(["alexnet", "vgg16"]), default=None,
              help="Write PipeCNN's published table for this AlexNet/CaffeNet or VGG-16 prototxt instead of "
                   "searching (its entries for the net's layers).")
@click.option("--level", type=int, default=0, show_default=True, help="The net state's level.")
@click.option("--stage", default="", help="The net state's stages, separated by ','.")
@click.argument("out", type=click.Path(dir_okay=False))
def main(model, weights, calib, refine, refine_by, start, published, level, stage, out):
    """Choose the fixed-point formats of every accelerated layer of MODEL and write them to OUT."""
    stages = [s for s in stage.split(",") if s]
    run(quantize, model, weights, calib, published, out, console_logger(), level=level, stages=stages,
        refine=refine, start=start, refine_by=refine_by)


def quantize(model, weights, calib, published, out, log, level=0, stages=(), refine=0, start=None,
             refine_by="accuracy"):
    """Write the table; returns (table, report) (report None for --published)."""
    from .. import accel
    from ..accel import published as tables
    from ..convert import quantize as search
    from ..net import accel_bridge
    from ..net.net import TEST, Net

    if published is not None:
        net = Net(model, TEST, level=level, stages=stages, log=log)
        probe = accel_bridge.build_plan(net, search._Everything(net), strict=False, frac_din_of=lambda i: 0)
        names = {net._layer_names[i] for i in probe.formats}
        table = tables.table(published, only=names)
        missing = sorted(names - set(table.layers))
        if missing:
            raise CaffeUnstableError(model, f"PipeCNN's {published} table has no entry for layer '{missing[0]}' "
                                            f"(it covers {', '.join(tables.TABLES[published][1])})")
        table.net = net.name
        _dump(table, out, log)
        return table, None
    if weights is None:
        raise CaffeUnstableError("--weights", "give the trained weights to calibrate on (or --published)")
    float_net = Net(model, TEST, level=level, stages=stages, weights=weights, log=log)
    calibration = search.calibration_from_data_layers(float_net, calib)
    acc = accel.open("numba")
    quiet = _quiet()
    accel_net = Net(model, TEST, level=level, stages=stages, weights=weights, accel=acc, log=quiet)
    first = None
    if start is not None:
        from ..accel.quant_table import QuantTable

        first = QuantTable.load(start)
        accel_bridge.build_plan(accel_net, first)      # one line when it does not fit the net
    table, report = search.choose_table(float_net, accel_net, calibration, log, refine=refine, start=first,
                                        refine_by=refine_by)
    table.net = float_net.name
    loss1 = report["float"]["top1"] - report["fixed"]["top1"]
    loss5 = report["float"]["top5"] - report["fixed"]["top5"]
    if loss1 >= 0.01 or loss5 >= 0.01:
        log.warning(f"the fixed-point accuracy loss stays at {loss1:.2%} top-1 and {loss5:.2%} top-5 "
                    "(PipeCNN's rule wants < 1 %); the table is written anyway", "quantize.py:1")
    _dump(table, out, log)
    return table, report


def _quiet():
    from ..log import NullLogger

    return NullLogger()


def _dump(table, out, log):
    table.dump(out)
    log.info(f"Wrote {len(table.layers)} layer formats to {out}", "quantize.py:1")
