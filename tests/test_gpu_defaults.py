"""GPU fundamentals that need no GPU to check: fp16 accumulates in fp32, default schedules use
tensor cores on every CUDA preset (Hopper's sm_90a included), CUDA kernels compile with the pass
settings that make both possible, and fp16 builds keep masks finite."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmopt import build, passes, targets
from tvmopt.kernels.defaults import rule_target
from tvmopt.prepare import ModelOptions, prepare

CUDA_PRESETS = [n for n in targets.available() if n.startswith("cuda-")]


def _matmul(path, m=256, k=512, n=256):
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(rng.random((k, n), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", CUDA_PRESETS)
def test_dlight_reads_every_cuda_preset_arch_as_digits(name):
    target = targets.resolve(name).tvm_target()
    arch = str(rule_target(target).attrs["arch"])
    assert arch.removeprefix("sm_").isdigit() and str(target.attrs["arch"]).startswith(arch)
    assert int(target.attrs["max_shared_memory_per_block"]) > 49152  # the opt-in limit


def test_cuda_fp16_matmul_uses_tensor_cores_and_accumulates_in_fp32(tmp_path):
    path = _matmul(tmp_path / "mm.onnx")
    preset, options = targets.resolve("cuda-sm90a"), ModelOptions(precision="fp16")
    matmul = next(f for gv, f in prepare(path, preset, options).mod.functions.items()
                  if "matmul" in gv.name_hint)
    assert 'T.Buffer((T.int64(256), T.int64(256)), "float32")' in matmul.script()
    result = build.build(path, preset, tmp_path / "mm.so", options=options)
    assert result.manifest["kernel_providers"]["matmul"] == "default"
    assert b"wmma" in (tmp_path / "mm.so").read_bytes()  # tensor-core instructions in the PTX


def test_fp16_clamps_constants_beyond_its_range(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Sub", ["one", "mask"], ["inverted"]),
         helper.make_node("Mul", ["inverted", "lowest"], ["bias"]),
         helper.make_node("Add", ["x", "bias"], ["scores"]),
         helper.make_node("Softmax", ["scores"], ["y"], axis=-1)], "mask",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "lowest")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "m.onnx"))
    prepared = prepare(tmp_path / "m.onnx", targets.resolve("host"),
                       ModelOptions(precision="fp16"))
    assert "-65504" in prepared.mod.script() and "3.4028" not in prepared.mod.script()
    assert "fp16-range-constants" in passes.PASS_NAMES
