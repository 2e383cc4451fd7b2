"""net/deploy.py: data layers become Input layers of given shapes; everything else is copied unchanged."""
import pytest
from google.protobuf import text_format

from caffe_unstable.errors import CaffeUnstableError
from caffe_unstable.net.deploy import data_layers_to_inputs
from caffe_unstable.proto import caffe_pb2

NET = """
name: "t"
layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
        data_param { source: "/nowhere" batch_size: 100 } transform_param { scale: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def test_data_layers_become_inputs_of_the_given_shapes():
    param = text_format.Parse(NET, caffe_pb2.NetParameter())
    out = data_layers_to_inputs(param, {"data": [4, 1, 2, 2], "label": [4]})
    d = out.layer[0]
    assert (d.name, d.type, list(d.top)) == ("d", "Input", ["data", "label"])
    assert [list(s.dim) for s in d.input_param.shape] == [[4, 1, 2, 2], [4]]
    assert [r.phase for r in d.include] == [caffe_pb2.TEST]
    assert not d.HasField("data_param") and not d.HasField("transform_param")
    assert out.layer[1] == param.layer[1] and out.layer[2] == param.layer[2] and out.name == "t"
    assert param.layer[0].type == "Data"                      # the input is left alone


def test_a_top_without_a_shape_is_one_line():
    param = text_format.Parse(NET, caffe_pb2.NetParameter())
    with pytest.raises(CaffeUnstableError, match="no input shape for its top 'label'") as err:
        data_layers_to_inputs(param, {"data": [4, 1, 2, 2]})
    assert err.value.where == "layer 'd'"
