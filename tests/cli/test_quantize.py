"""cu-quantize: a table chosen on real MNIST calibration images read through the TEST data layer (an LMDB), then
used by cu-test --accel numba; PipeCNN's published tables; one-line errors."""
import lmdb
import pytest
from click.testing import CliRunner

from caffe_unstable.accel.quant_table import QuantTable
from caffe_unstable.cli.quantize import main
from caffe_unstable.data.datasets import read_idx
from caffe_unstable.io.prototxt import read_net_text, write_text
from caffe_unstable.proto import caffe_pb2


@pytest.fixture(scope="module")
def lenet_with_lmdb(shared, tmp_path_factory):
    """lenet_train_test.prototxt reading the first 300 MNIST test images from an LMDB."""
    folder = tmp_path_factory.mktemp("lenet")
    images = read_idx(shared / "data/mnist/t10k-images-idx3-ubyte.gz")[:300]
    labels = read_idx(shared / "data/mnist/t10k-labels-idx1-ubyte.gz")[:300]
    env = lmdb.open(str(folder / "mnist_test_lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (img, label) in enumerate(zip(images, labels)):
            d = caffe_pb2.Datum(channels=1, height=28, width=28, data=img.tobytes(), label=int(label))
            txn.put(b"%08d" % i, d.SerializeToString())
    env.close()
    param = read_net_text(shared / "models/lenet_mnist/lenet_train_test.prototxt")
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = str(folder / "mnist_test_lmdb")
    model = folder / "lenet_train_test.prototxt"
    model.write_text(write_text(param))
    return model, shared / "models/lenet_mnist/lenet_iter_10000.caffemodel", folder


def test_quantize_then_test_on_the_accelerator(lenet_with_lmdb):
    model, weights, folder = lenet_with_lmdb
    out = folder / "lenet.quant.yaml"
    result = CliRunner().invoke(main, [f"--model={model}", "--weights", str(weights), "--calib", "200", str(out)])
    assert result.exit_code == 0, result.output
    table = QuantTable.load(out)
    assert list(table.layers) == ["conv1", "conv2", "ip1", "ip2"]
    assert table["conv1"].frac_din == 6                       # MNIST pixels in [0, 1) (scale 1/256)
    for a, b in (("conv1", "conv2"), ("conv2", "ip1"), ("ip1", "ip2")):
        assert table[b].frac_din == table[a].frac_dout          # the chain through pooling and ReLU
    text = out.read_text()
    assert "# calibration: {images: 200, source: the TEST data source, float: {top1: " in text
    assert "Wrote 4 layer formats to" in result.output

    from caffe_unstable.cli.test import main as cu_test

    res = CliRunner().invoke(cu_test, ["--model", str(model), "--weights", str(weights), "--iterations", "3",
                                       "--accel", "numba", "--quant", str(out), "--json", str(folder / "t.json")])
    assert res.exit_code == 0, res.output
    import json

    got = json.loads((folder / "t.json").read_text())
    assert got["accel"] == "numba" and got["outputs"]["accuracy"] >= 0.98


def test_refine_keeps_a_valid_table_and_never_loses_accuracy(lenet_with_lmdb):
    model, weights, folder = lenet_with_lmdb
    out = folder / "refined.quant.yaml"
    result = CliRunner().invoke(main, [f"--model={model}", "--weights", str(weights), "--calib", "100",
                                       "--refine", "1", str(out)])
    assert result.exit_code == 0, result.output
    assert "refine: start top-1 " in result.output
    table = QuantTable.load(out)
    for a, b in (("conv1", "conv2"), ("conv2", "ip1"), ("ip1", "ip2")):
        assert table[b].frac_din == table[a].frac_dout
    assert all(f.n >= 1 and f.m >= 1 for f in table.layers.values())
    start = float(result.output.split("refine: start top-1 ")[1].split(",")[0])
    text = out.read_text()
    fixed = float(text.split("fixed: {top1: ")[1].split(",")[0])
    assert fixed >= start                                    # a move is kept only when it helps


def test_published_tables(shared, tmp_path):
    from caffe_unstable import accel
    import caffe_unstable as caffe
    from caffe_unstable.net import accel_bridge

    out = tmp_path / "alexnet.quant.yaml"
    model = shared / "models/bvlc_reference_caffenet/deploy.prototxt"
    result = CliRunner().invoke(main, ["--model", str(model), "--published", "alexnet", str(out)])
    assert result.exit_code == 0, result.output
    table = QuantTable.load(out)
    assert table["conv1"] == accel.LayerFormat(8, 0, -4) and table["fc6"] == accel.LayerFormat(11, -1, 0)
    net = caffe.Net(str(model), caffe.TEST, accel=accel.open("numba", quant=str(out)))
    where = accel_bridge.where_layers_run(net)          # the table passes every check against the net
    assert all(where[n] == "accelerator" for n in ("conv1", "pool1", "norm1", "conv5", "pool5", "fc8"))
    assert accel_bridge.blob_fracs(net)["norm1"] == 0 and accel_bridge.blob_fracs(net)["pool5"] == -1

    out = tmp_path / "vgg16.quant.yaml"
    model = shared / "models/vgg16/VGG_ILSVRC_16_layers_deploy.prototxt"      # stops at pool5: no fc6-fc8
    assert CliRunner().invoke(main, ["--model", str(model), "--published", "vgg16", str(out)]).exit_code == 0
    table = QuantTable.load(out)
    assert len(table.layers) == 13 and table["conv5_3"] == accel.LayerFormat(8, -3, -2)
    assert accel.load_quant("pipecnn:vgg16")["fc8"].w_bits == 4


def test_errors_are_one_line(shared, tmp_path):
    runner = CliRunner()
    model = shared / "models/lenet_mnist/lenet.prototxt"
    res = runner.invoke(main, ["--model", str(model), "--published", "alexnet", str(tmp_path / "x.yaml")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        f"error: {model}: PipeCNN's alexnet table has no entry for layer 'ip1' (it covers conv1, conv2, conv3, "
        "conv4, conv5, fc6, fc7, fc8)")
    res = runner.invoke(main, ["--model", str(model), str(tmp_path / "x.yaml")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == \
        "error: --weights: give the trained weights to calibrate on (or --published)"
    res = runner.invoke(main, ["--model", str(model), "--weights",
                               str(shared / "models/lenet_mnist/lenet_iter_10000.caffemodel"), str(tmp_path / "x")])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        f"error: {model}: calibration needs a net with a data layer and labels (an Accuracy or loss layer naming "
        "them); pass a train_test prototxt")
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "x").exists()


START_TABLE = ("format: caffe_unstable.quant/1\nlayers:\n"
               "  conv1: {frac_w: 7, frac_din: 6, frac_dout: 4}\n  conv2: {frac_w: 8, frac_din: 4, frac_dout: 2}\n"
               "  ip1: {frac_w: 9, frac_din: 2, frac_dout: 2}\n  ip2: {frac_w: 7, frac_din: 2, frac_dout: 1}\n")


def quantize_from(lenet_with_lmdb, start_text, out, *options):
    """cu-quantize --start (a table written from start_text) on 100 LeNet calibration images -> the result."""
    model, weights, _ = lenet_with_lmdb
    start = out.with_name("start-" + out.name)
    start.write_text(start_text)
    return CliRunner().invoke(main, [f"--model={model}", "--weights", str(weights), "--calib", "100",
                                     "--start", str(start), *options, str(out)])


def test_refine_from_a_given_table(lenet_with_lmdb, tmp_path):
    """--start: refinement goes on from an existing table (steps 2-3 skipped), and the start table is checked
    against the net with one line."""
    out = tmp_path / "refined.quant.yaml"
    result = quantize_from(lenet_with_lmdb, START_TABLE, out, "--refine", "1")
    assert result.exit_code == 0, result.output
    assert "layer 'conv1': frac_w" not in result.output.split("refine: start")[0]   # no layer-by-layer search
    same = quantize_from(lenet_with_lmdb, START_TABLE, tmp_path / "same.quant.yaml")
    assert same.exit_code == 0, same.output
    assert QuantTable.load(tmp_path / "same.quant.yaml").layers == QuantTable.load(
        tmp_path / "start-same.quant.yaml").layers                                    # kept as given
    table = QuantTable.load(out)
    assert all(f.n >= 1 and f.m >= 1 for f in table.layers.values())
    start_top1 = float(result.output.split("refine: start top-1 ")[1].split(",")[0])
    assert float(out.read_text().split("fixed: {top1: ")[1].split(",")[0]) >= start_top1
    partial = "format: caffe_unstable.quant/1\nlayers:\n  conv1: {frac_w: 7, frac_din: 6, frac_dout: 4}\n"
    bad = quantize_from(lenet_with_lmdb, partial, tmp_path / "bad.quant.yaml")
    assert bad.exit_code == 1
    last = bad.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "layer 'conv2' (Convolution) has no entry" in last
    assert not (tmp_path / "bad.quant.yaml").exists()


def test_refine_by_loss_only_lowers_the_loss(lenet_with_lmdb, tmp_path):
    result = quantize_from(lenet_with_lmdb, START_TABLE, tmp_path / "refined.quant.yaml", "--refine", "1",
                           "--refine-by", "loss")
    assert result.exit_code == 0, result.output
    losses = [float(line.rsplit("loss ", 1)[1]) for line in result.output.splitlines() if "] refine" in line]
    assert len(losses) >= 2                                   # the start and at least one kept move
    assert all(b < a for a, b in zip(losses, losses[1:]))    # every kept move lowers the loss
