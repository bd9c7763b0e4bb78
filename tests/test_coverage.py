"""Real-world ONNX exports (tests/zoo.py: CNN families, transformers with dynamic axes and external
data, opsets 11 to 21, both PyTorch exporters): each imports, builds for `host` and matches ONNX
Runtime; the normalisation that makes them importable is reported; TVM failures name the node."""

import json
import shutil

import onnx
import pytest

import tvmopt
import zoo
from conftest import assert_one_line_error
from tvmopt import build, frontend, runtime, targets
from tvmopt.frontend import normalization
from tvmopt.graph import pipeline
from tvmopt.prepare import ModelOptions
from tvmopt.errors import TvmoptError


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory):
    return zoo.build_all(tmp_path_factory.mktemp("zoo"))


def _build_and_compare(path, meta, tmp_path, precision):
    options = ModelOptions(input_shapes=meta["input_shapes"], precision=precision)
    lib = build.build(path, targets.resolve("host"), tmp_path / f"{precision}.so", options=options).path
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=7)
    return max(m.max_rel for m in runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs)))


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_matches_onnxruntime(zoo_models, tmp_path, name):
    meta = zoo.ZOO[name][1]
    assert _build_and_compare(zoo_models[name], meta, tmp_path, "fp32") <= 1e-4
    fp16 = _build_and_compare(zoo_models[name], meta, tmp_path, "fp16")
    print(f"{name}: fp16 max relative error {fp16:.2e}")
    assert fp16 <= 1e-2


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model_compiles_for_hopper_in_fp16(zoo_models, tmp_path, name):
    """The CUDA half of the fp16 check (tests/test_gpu.py runs these artifacts on a GPU): every
    zoo model converts to fp16 (the mixed-precision pass is not skipped) and compiles. TVM
    kernels only: compiling CUTLASS instances is tests/test_library.py's (costly) business."""
    options = ModelOptions(input_shapes=zoo.ZOO[name][1]["input_shapes"], precision="fp16",
                           kernels="tvm")
    result = build.build(zoo_models[name], targets.resolve("cuda-sm90a"), tmp_path / "m.so",
                         options=options)
    assert result.path.stat().st_size > 0 and result.manifest["precision"] == "fp16"
    assert not [c for c in result.manifest["normalization"] if c.startswith("skipped:")]


@pytest.mark.parametrize("name", ["bert_encoder", "gpt_decoder", "t5_encoder"])
def test_zoo_builds_print_no_tvm_log_lines(zoo_models, tmp_path, name):
    """The command as users run it (its own process): TVM's C++ warnings about these models (the
    embedding's "Fast mode segfaults ...") reach only the log, which -v shows with its prefix."""
    import subprocess
    import sys

    shapes = [f"{k}={'x'.join(map(str, v))}" for k, v in zoo.ZOO[name][1]["input_shapes"].items()]
    command = [sys.executable, "-m", "tvmopt", "-v", "build", str(zoo_models[name]), "--target",
               "host",
               "-o", str(tmp_path / "m.so"), "--check",
               *(arg for shape in shapes for arg in ("--input-shape", shape))]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    native = [line for line in (proc.stdout + proc.stderr).splitlines() if "/project/" in line]
    assert native and all(" tvmopt.native DEBUG " in line for line in native), native


def test_the_zoo_covers_what_users_bring():
    metas = [meta for _, meta in zoo.ZOO.values()]
    families = {m["family"] for m in metas}
    assert {"residual", "depthwise-separable", "squeeze-excitation", "channel-shuffle",
            "dense-concat", "transformer-encoder", "transformer-decoder", "recurrent",
            "resize-to-size", "relative-attention-encoder", "masked-fill-encoder",
            "windowed-attention", "mixture-of-experts"} <= families
    assert {m["exporter"] for m in metas} >= {"legacy", "dynamo", "onnx.helper"}
    assert min(m["opset"] for m in metas) == 11 and max(m["opset"] for m in metas) == 21
    assert any(m["external_data"] for m in metas)
    assert any(set(m["dynamic"]) == {"batch", "sequence"} for m in metas)


def _raw_import(path, meta):
    model = frontend.load_model(path)
    return model, frontend.resolve_inputs(model, meta["input_shapes"])


def test_shape_arithmetic_is_folded_before_import(zoo_models):
    meta = zoo.ZOO["bert_encoder"][1]
    model, inputs = _raw_import(zoo_models["bert_encoder"], meta)
    # Without folding, TVM's importer fails on the exporter's Shape/Gather/Range arithmetic, and
    # the error names the ONNX node it was converting.
    with pytest.raises(TvmoptError, match=r"importer failed at node '.+' \(\w+\)"):
        frontend.import_model(model, inputs)
    model, inputs = _raw_import(zoo_models["bert_encoder"], meta)
    normalized, changes = normalization.normalize(model, inputs)
    steps = {c.step: c.detail for c in changes}
    assert steps["fix-input-dims"] == "batch=2, sequence=16"
    assert "Shape" in steps["fold-constants"]
    assert not any(n.op_type in ("Shape", "Range") for n in normalized.graph.node)
    frontend.import_model(normalized, inputs)


def test_a_lost_shape_is_named_when_a_later_stage_fails(zoo_models):
    meta = zoo.ZOO["gpt_decoder_dynamo"][1]
    model, inputs = _raw_import(zoo_models["gpt_decoder_dynamo"], meta)
    imported = frontend.import_model(model, inputs)  # unfolded: imports, but a shape is lost
    assert imported.shape_lost_at and "(" in imported.shape_lost_at
    with pytest.raises(TvmoptError, match=r"TVM failed in the graph passes .*first ONNX node whose "
                                          r"output shape TVM could not determine is '.+' \(\w+\)"):
        with imported.explain_failures("the graph passes"):
            pipeline.run_pipeline(imported.mod, targets.resolve("host").tvm_target(),
                                  pipeline.PipelineOptions("fp32", "NCHW"))


def test_old_opsets_are_converted_and_clamps_spelled_out(zoo_models):
    model, inputs = _raw_import(zoo_models["mobilenet_v2_opset11"], zoo.ZOO["mobilenet_v2_opset11"][1])
    normalized, changes = normalization.normalize(model, inputs)
    steps = {c.step: c.detail for c in changes}
    assert steps["convert-opset"].startswith("11 -> 13")
    assert frontend.model_opset(normalized) == 13
    assert steps["spell-out-clamps"] == "Clip x8 as Max/Min arithmetic"
    assert not any(n.op_type == "Clip" for n in normalized.graph.node)


def test_big_models_are_folded_through_files(zoo_models, monkeypatch):
    monkeypatch.setattr(normalization, "INLINE_LIMIT", 0)  # take the > 2 GiB path with a small model
    model, inputs = _raw_import(zoo_models["gpt_decoder"], zoo.ZOO["gpt_decoder"][1])
    normalized, changes = normalization.normalize(model, inputs)
    assert "fold-constants" in {c.step for c in changes}
    assert not any(n.op_type == "Shape" for n in normalized.graph.node)
    mod = frontend.import_model(normalized, inputs).mod
    assert mod["main"] is not None


def test_a_big_model_left_unfolded_keeps_its_weights(tmp_path, monkeypatch):
    import numpy as np

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
        [onnx.numpy_helper.from_array(weight, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    monkeypatch.setattr(normalization, "INLINE_LIMIT", 0)  # through files, where nothing folds
    normalized, changes = normalization.normalize(model, frontend.graph_inputs(model))
    assert "fold-constants" not in {c.step for c in changes}
    (w,) = normalized.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w), weight)  # still in memory


def test_external_data_is_read_from_beside_the_model(zoo_models, tmp_path, invoke):
    src = zoo_models["gpt_decoder"]
    moved = tmp_path / "elsewhere" / "gpt.onnx"
    moved.parent.mkdir()
    shutil.copy(src, moved)  # without its .data file
    result = invoke("build", moved, "--target", "host", "-o", tmp_path / "o.so",
                    "--input-shape", "input_ids=2x16")
    assert_one_line_error(result, "gpt_decoder.onnx.data", "copy that file next to the model")
    shutil.copy(src.with_name(src.name + ".data"), moved.parent)
    hash_before = frontend.load(moved).sha256
    data = moved.parent / (src.name + ".data")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1  # the same graph with one weight bit flipped is another model
    data.write_bytes(bytes(raw))
    assert frontend.load(moved).sha256 != hash_before


def test_inspect_json_lists_ops_dynamic_dims_converters_and_changes(zoo_models, invoke):
    result = invoke("inspect", zoo_models["gpt_decoder"], "--json", "--input-shape", "input_ids=2x16")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # progress logs go to stderr
    assert info["dynamic_dims"] == ["batch", "sequence"]
    assert info["op_histogram"]["Shape"] > 0 and info["unsupported_ops"] == []
    assert info["external_data"] == ["gpt_decoder.onnx.data"]
    assert [c["step"] for c in info["normalization"]][:2] == ["fix-input-dims", "fold-constants"]
    text = invoke("inspect", zoo_models["mobilenet_v2_opset11"]).output
    assert "convert-opset: 11 -> 13" in text and "spell-out-clamps" in text


def test_op_without_converter_is_listed_by_inspect(tmp_path, invoke):
    path = tmp_path / "celu.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Celu", ["x"], ["y"], name="my_celu")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    info = json.loads(invoke("inspect", path, "--json").stdout)
    assert info["unsupported_ops"] == [{"node": "my_celu", "op_type": "Celu"}]


@pytest.mark.parametrize("width, how", [(12, "split into 3 equal parts"),
                                        (10, "split 10 as [4, 4, 2]")])
def test_split_with_opset18_num_outputs_is_repaired_and_said(invoke, tmp_path, width, how):
    import models

    path = models.split_with_num_outputs(tmp_path / "m.onnx", width)
    before = path.read_bytes()
    result = invoke("build", path, "--target", "host", "-o", tmp_path / "m.so", "--check")
    assert result.exit_code == 0 and "check passed" in result.output, result.output
    assert f"num_outputs=3 in an opset-17 model; {how}" in result.output
    assert "repair: Split node 'split'" in invoke("inspect", path).output
    assert path.read_bytes() == before  # mended in memory only


def test_a_data_dependent_loop_is_named_with_what_to_do(invoke, tmp_path):
    import models

    result = invoke("build", models.data_dependent_loop(tmp_path / "m.onnx"), "--target", "host",
                    "-o", tmp_path / "m.so")
    assert_one_line_error(result, "Loop (node repeat)", "onnx.utils.extract_model")


def test_non_max_suppression_builds_and_matches_onnxruntime(tmp_path):
    import numpy as np

    import models

    path = models.non_max_suppression(tmp_path / "m.onnx")
    model = tvmopt.load(build.build(path, targets.resolve("host"), tmp_path / "m.so").path)
    rng = np.random.default_rng(0)
    corners = rng.random((2, 50, 2)) * 10
    inputs = {"boxes": np.concatenate([corners, corners + rng.random((2, 50, 2)) * 4 + 1],
                                      -1).astype(np.float32),
              "scores": rng.random((2, 3, 50)).astype(np.float32)}
    selected = model(inputs)["selected"]
    assert len(selected) > 6  # overlapping boxes: some suppressed, some kept
    np.testing.assert_array_equal(selected,
                                  runtime.onnxruntime_outputs(path, inputs)["selected"])
