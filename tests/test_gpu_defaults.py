"""GPU fundamentals that need no GPU to check: fp16 accumulates in fp32, default schedules use
tensor cores on every CUDA preset (Hopper's sm_90a included), CUDA kernels compile with the pass
settings that make both possible, and fp16 builds keep masks finite."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvmopt import build, targets
from tvmopt.kernels.defaults import default_schedule, rule_target
from tvmopt.graph.pipeline import PASS_NAMES
from tvmopt.kernels.tensorcore_gemm import FILL_BLOCKS, block_tile
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
    # M=49 (ResNet-50's 7x7 stage at batch 1): DLight alone leaves a dim <= 64 on CUDA cores.
    path = _matmul(tmp_path / "mm.onnx", m=49)
    preset, options = targets.resolve("cuda-sm90a"), ModelOptions(precision="fp16", kernels="tvm")
    matmul = next(f for gv, f in prepare(path, preset, options).mod.functions.items()
                  if "matmul" in gv.name_hint)
    assert 'T.Buffer((T.int64(49), T.int64(256)), "float32")' in matmul.script()
    result = build.build(path, preset, tmp_path / "mm.so", options=options)
    assert result.manifest["kernel_providers"]["matmul"] == "default"
    assert b"wmma" in (tmp_path / "mm.so").read_bytes()  # tensor-core instructions in the PTX


def test_an_fp32_cuda_build_never_registers_tvms_tensor_intrinsics(tmp_path):
    """Registering TVM's tensor intrinsics (importing tvm.s_tir.tensor_intrin) takes tens of
    seconds per process: only a kernel the tensor-core rule tensorizes pays it, so an fp32
    build, whose GEMMs the rule leaves to DLight's CUDA-core schedules, does not."""
    import subprocess
    import sys

    path = _matmul(tmp_path / "mm.onnx")
    out = tmp_path / "mm.so"
    script = ("import sys\nfrom tvmopt import build, targets\n"
              f"build.build({str(path)!r}, targets.resolve('cuda-sm90a'), {str(out)!r})\n"
              "print('tvm.s_tir.tensor_intrin' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"
    assert out.exists()


def test_gemv_shaped_matmul_keeps_cuda_cores(tmp_path):
    """At M=1 a 16x16 tensor-core tile would be 94% padding."""
    preset, options = targets.resolve("cuda-sm90a"), ModelOptions(precision="fp16", kernels="tvm")
    mod = prepare(_matmul(tmp_path / "gemv.onnx", m=1), preset, options).mod
    matmul = next(f for gv, f in mod.functions.items() if "matmul" in gv.name_hint)
    assert "wmma" not in str(default_schedule(matmul, preset.tvm_target()).trace)


@pytest.mark.parametrize("m, n", [(128, 768), (49, 512), (3136, 64), (4096, 4096)])
def test_gemm_tiles_give_every_sm_a_block_when_they_can(m, n):
    wm, tm, wn, tn = block_tile(m, n)
    bm, bn = 16 * wm * tm, 16 * wn * tn
    blocks = -(-m // bm) * -(-n // bn)
    if m * n >= FILL_BLOCKS * 16 * 32:  # room for a block per SM with the smallest tile
        assert blocks >= FILL_BLOCKS
    if (m, n) == (4096, 4096):  # a big GEMM keeps DLight's 128x128 tile
        assert (bm, bn) == (128, 128)


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
    assert "fp16-range-constants" in PASS_NAMES


def test_fp16_conversion_failure_keeps_the_model_fp32_and_says_so(tmp_path, monkeypatch, caplog):
    """TVM's ToMixedPrecision has crashed on real models ("Expected TensorType, but got
    R.Callable"): the build goes on in fp32 and records why, instead of failing."""
    import tvm
    from tvm import relax

    from tvmopt import runtime

    @tvm.transform.module_pass(opt_level=0, name="ToMixedPrecision")
    def crashing(mod, _ctx):
        raise tvm.error.InternalError("Expected TensorType, but got R.Callable")

    monkeypatch.setattr(relax.transform, "ToMixedPrecision", lambda **kw: crashing)
    path = _matmul(tmp_path / "mm.onnx", m=4, k=8, n=4)
    result = build.build(path, targets.resolve("host"), tmp_path / "mm.so",
                         options=ModelOptions(precision="fp16"))
    (line,) = [c for c in result.manifest["normalization"] if c.startswith("skipped:")]
    assert "R.Callable" in line and "stays fp32" in line and "stays fp32" in caplog.text
    model = runtime.load(result.path)
    x = runtime.random_inputs(model.inputs)
    (m,) = runtime.compare(model(x), runtime.onnxruntime_outputs(path, x))
    assert m.max_rel < 1e-5  # fp32 accuracy: nothing ran in fp16
