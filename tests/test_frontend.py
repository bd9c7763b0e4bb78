import onnx
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


def _build_and_compare_with_onnxruntime(path, tmp_path, input_shapes=None):
    """Largest relative error of a host build against ONNX Runtime, over every output."""
    import tvmopt
    from tvmopt import build, runtime, targets
    from tvmopt.prepare import ModelOptions

    options = ModelOptions(input_shapes=input_shapes or {})
    lib = build.build(path, targets.resolve("host"), tmp_path / (path.stem + ".so"),
                      options=options).path
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=7)
    reference = runtime.onnxruntime_outputs(path, inputs)
    return max(m.max_rel for m in runtime.compare(model(inputs), reference))


def test_col2im_is_rewritten_exactly_and_builds(tmp_path, invoke):
    """Col2Im has no TVM converter: normalisation writes it as a ConvTranspose, which ONNX Runtime
    runs to the same bits, and the host build matches ONNX Runtime on every attribute mix."""
    import json

    import numpy as np

    from tvmopt import runtime

    path = models.col2im(tmp_path / "col2im.onnx")
    info = json.loads(invoke("inspect", path, "--json").stdout)
    assert info["op_histogram"] == {"Col2Im": len(models.COL2IM_CASES)}
    assert info["unsupported_ops"] == []
    assert [c["step"] for c in info["normalization"]] == ["col2im"]

    model = frontend.load_model(path)
    specs = frontend.resolve_inputs(model)
    rewritten, _ = frontend.normalize(model, specs)
    assert {n.op_type for n in rewritten.graph.node} == {"Reshape", "ConvTranspose"}
    inputs = runtime.random_inputs(specs, seed=3)
    expected = runtime.onnxruntime_outputs(path, inputs)
    got = runtime.onnxruntime_outputs(rewritten.SerializeToString(), inputs)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)

    assert _build_and_compare_with_onnxruntime(path, tmp_path) <= 1e-6


def test_torch_fold_and_unfold_exported_by_dynamo_build(tmp_path):
    """The dynamo exporter (opset 18) writes F.fold as Col2Im; F.unfold as Gathers and a Pad."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import zoo

    class FoldUnfold(torch.nn.Module):
        def forward(self, columns, image):
            folded = F.fold(columns, output_size=(7, 9), kernel_size=(2, 3), stride=(2, 1),
                            padding=(1, 0), dilation=(1, 2))  # blocks overlap in width
            return folded, F.fold(F.unfold(image, 3, padding=1) * 2, (8, 8), 3, padding=1)

    path = tmp_path / "fold.onnx"
    args = (torch.randn(zoo.BATCH, 4 * 6, 20), torch.randn(zoo.BATCH, 3, 8, 8))
    exported = zoo._export(FoldUnfold(), args, path, input_names=["columns", "image"],
                           output_names=["folded", "refolded"], opset=18, exporter="dynamo",
                           dynamic_axes={name: {0: "batch"} for name in
                                         ("columns", "image", "folded", "refolded")})
    assert [n.op_type for n in exported.graph.node].count("Col2Im") == 2
    zoo._save(exported, path)
    shapes = {"columns": (zoo.BATCH, 24, 20), "image": (zoo.BATCH, 3, 8, 8)}
    assert _build_and_compare_with_onnxruntime(path, tmp_path, shapes) <= 1e-6


def test_col2im_with_a_computed_image_shape_is_refused_by_name():
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Col2Im", ["x", "size", "block"], ["y"], name="fold")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9]),
         helper.make_tensor_value_info("size", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "block")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(TvmoptError, match="Col2Im node 'fold': its image_shape is computed"):
        frontend.normalize(model, frontend.resolve_inputs(model))


def test_a_model_past_protobufs_2_gib_is_told_from_its_size_not_by_serialising_it():
    """Past 2 GiB, protobuf's upb backend raises from ByteSize itself (a Llama-style decoder's
    2.4 GB of weights failed `inspect` and `build` this way): the size check says "too big"
    instead. An in-memory initializer of 2 GiB + 1 byte, nothing written."""
    from tvmopt.frontend.loading import fits_protobuf

    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [2**31 + 1])]))
    big = model.graph.initializer.add()  # extend() would serialise it
    big.name, big.data_type = "w", onnx.TensorProto.UINT8
    big.dims.append(2**31 + 1)
    big.raw_data = bytes(2**31 + 1)
    assert not fits_protobuf(model)
    del model.graph.initializer[:]
    assert fits_protobuf(model)


def test_the_importers_warnings_go_to_the_debug_log_not_the_callers_terminal(caplog):
    """TVM's importer warns (Python warnings) about what tvmopt reports itself, e.g. the ONNX
    checker's complaint about an attribute the op does not define (or a model past 2 GiB it
    cannot serialise); a Python API caller sees none of them, the debug log has them."""
    import logging
    import warnings

    from onnx import TensorProto, helper

    relu = helper.make_node("Relu", ["x"], ["y"], stray=1)  # Relu has no attribute "stray"
    graph = helper.make_graph([relu], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    caplog.set_level(logging.DEBUG, logger="tvmopt.frontend")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frontend.import_model(model, frontend.resolve_inputs(model, {}))
    assert not [str(w.message) for w in caught]
    assert "Unrecognized attribute: stray" in caplog.text
