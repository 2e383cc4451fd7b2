"""accel/quant_table.py: the *.quant.yaml schema (pipecnn.md §10.5): round trip and one-line errors with the line."""
import pytest

from caffe_unstable import accel
from caffe_unstable.accel.quant import LayerFormat
from caffe_unstable.accel.quant_table import QuantTable
from caffe_unstable.errors import CaffeUnstableError

TEXT = """format: caffe_unstable.quant/1
net: bvlc_reference_caffenet              # informational
layers:                                   # frac_w (weights and bias), frac_din (input), frac_dout (output)
  conv1: {frac_w: 8,  frac_din: 0,  frac_dout: -4}
  "fire2/squeeze1x1": {frac_w: 8, frac_din: 0, frac_dout: -2}
  fc8:   {frac_w: 7, frac_din: 2, frac_dout: 2, w_bits: 4}
"""


def test_parse_and_round_trip(tmp_path):
    t = QuantTable.parse(TEXT, "a.quant.yaml")
    assert t.net == "bvlc_reference_caffenet"
    assert t["conv1"] == LayerFormat(8, 0, -4) and t["fc8"] == LayerFormat(7, 2, 2, 4)
    assert t.where("fc8") == "a.quant.yaml:6"
    path = tmp_path / "b.quant.yaml"
    t.dump(path, comments=["calibration: {images: 3}"])
    back = QuantTable.load(path)
    assert back == t and list(back.layers) == list(t.layers)
    assert path.read_text().rstrip().endswith("# calibration: {images: 3}")


@pytest.mark.parametrize("text,message", [
    ("format: caffe_unstable.quant/2\nlayers: {}\n",
     "t.yaml:1: format: expected 'caffe_unstable.quant/1', got 'caffe_unstable.quant/2'"),
    ("layers:\n  a: {frac_w: 1, frac_din: 0, frac_dout: 0}\n", "t.yaml:1: format: expected "
                                                               "'caffe_unstable.quant/1', got nothing"),
    ("format: caffe_unstable.quant/1\ntables: {}\n", "t.yaml:2: tables: unknown key (known: format, net, layers)"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 1, frac_din: 0, frac_out: 0}\n",
     "t.yaml:3: layer 'a': frac_out: unknown key (known: frac_w, frac_din, frac_dout, w_bits)"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 1.5, frac_din: 0, frac_dout: 0}\n",
     "t.yaml:3: layer 'a': frac_w must be an integer, got '1.5'"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 1, frac_din: 0}\n",
     "t.yaml:3: layer 'a': missing frac_dout"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 300, frac_din: 0, frac_dout: 0}\n",
     "t.yaml:3: layer 'a': frac_w = 300 is outside [-128, 127] (a char kernel argument)"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 8, frac_din: 0, frac_dout: 0}\n"
     "  a: {frac_w: 8, frac_din: 0, frac_dout: 0}\n", "t.yaml:4: layer 'a': listed twice"),
    ("format: caffe_unstable.quant/1\nlayers: [1, 2]\n", "t.yaml:2: layers: expected a mapping: layer name -> "
                                                        "{frac_w: F, frac_din: F, frac_dout: F}"),
    ("format: caffe_unstable.quant/1\nlayers:\n  a: {frac_w: 8\n", "t.yaml:4: not valid YAML"),
])
def test_errors_name_the_file_line_and_layer(text, message):
    with pytest.raises(CaffeUnstableError) as info:
        QuantTable.parse(text, "t.yaml")
    assert str(info.value).startswith(message)


def test_load_quant_forms(tmp_path):
    assert accel.load_quant(None) is None
    assert accel.load_quant({"conv1": (8, 0, -4)})["conv1"] == LayerFormat(8, 0, -4)
    assert accel.load_quant("pipecnn:alexnet")["fc6"] == LayerFormat(11, -1, 0)
    with pytest.raises(CaffeUnstableError, match="unknown published table 'resnet'"):
        accel.load_quant("pipecnn:resnet")
    with pytest.raises(CaffeUnstableError, match="no such quantization table"):
        accel.load_quant(str(tmp_path / "missing.quant.yaml"))
