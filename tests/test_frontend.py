import pytest

import models
from tvmopt import frontend
from tvmopt.errors import TvmoptError


def test_describe_reports_symbolic_dims_histogram_and_opset(dynamic_model):
    info = frontend.describe(frontend.load(dynamic_model)).as_dict()
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert info["outputs"][0]["name"] == "logits"
    assert info["dynamic_dims"] == ["batch"]
    assert info["opset"] == 17
    assert info["op_histogram"]["Conv"] == 2
    assert sum(info["op_histogram"].values()) == 8
    assert info["unsupported_ops"] == []


def test_unsupported_ops_listed_all_at_once_with_node_names(tmp_path):
    path = models.unsupported_ops(tmp_path / "u.onnx")
    model = frontend.load_model(path)
    assert [(u.node, u.op_type) for u in frontend.unsupported_nodes(model)] == [
        ("my_celu", "Celu"), ("my_lpnorm", "LpNormalization")]
    with pytest.raises(TvmoptError, match="Celu \\(node my_celu\\), LpNormalization"):
        frontend.import_model(model, frontend.resolve_inputs(model))


def test_initializers_listed_as_inputs_are_not_inputs():
    model = frontend.load_model(models.LIGHT_DIR / "light_resnet50.onnx")
    assert len(model.graph.input) > 1  # old exports list every weight as an input
    assert [t.name for t in frontend.graph_inputs(model)] == ["gpu_0/data_0"]


@pytest.mark.parametrize("text,expected", [
    ("x=1x3x224x224", ("x", (1, 3, 224, 224))),
    ("input_ids = 2,128", ("input_ids", (2, 128))),
    ("a:b=7", ("a:b", (7,))),
])
def test_parse_input_shape(text, expected):
    assert frontend.parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["x", "x=", "x=1xa", "=1x2", "x=0x3"])
def test_parse_input_shape_rejects(text):
    with pytest.raises(TvmoptError, match="--input-shape"):
        frontend.parse_input_shape(text)


def test_resolve_inputs(dynamic_model, conv_model):
    dyn = frontend.load_model(dynamic_model)
    with pytest.raises(TvmoptError, match="--input-shape x=1x3x16x16"):
        frontend.resolve_inputs(dyn)
    assert frontend.resolve_inputs(dyn, {"x": (4, 3, 16, 16)})[0].shape == (4, 3, 16, 16)
    with pytest.raises(TvmoptError, match="unknown input 'y'.*inputs are: x"):
        frontend.resolve_inputs(dyn, {"y": (1,)})
    with pytest.raises(TvmoptError, match="contradicts"):
        frontend.resolve_inputs(frontend.load_model(conv_model), {"x": (1, 3, 8, 8)})
    with pytest.raises(TvmoptError, match="rank 4"):
        frontend.resolve_inputs(dyn, {"x": (4, 3)})


@pytest.mark.parametrize("content,match", [
    (b"this is plainly a text file, not a model\n" * 5, "not"),
    (b"", "not an ONNX model"),
])
def test_load_rejects_non_onnx(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(TvmoptError, match=match):
        frontend.load_model(path)


def test_load_rejects_truncated(tmp_path, conv_model):
    data = conv_model.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TvmoptError, match="truncated|not an ONNX|rejects"):
        frontend.load_model(path)


def test_import_binds_weights_as_constants(conv_model):
    model = frontend.load_model(conv_model)
    mod = frontend.import_model(model, frontend.resolve_inputs(model)).mod
    params = mod["main"].params
    assert len(params) == 1  # only the real input; weights are embedded constants
