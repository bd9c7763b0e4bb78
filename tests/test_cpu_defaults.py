"""Untuned CPU kernels: convolutions and matmuls get the parallel, vectorised register tile of
tvmopt/kernels/cpu_gemm.py, every other kernel the parallel, vectorised rows of
tvmopt/kernels/cpu_rows.py, and the models still match ONNX Runtime."""

import pytest

import models
from tvmopt import build, prepare, runtime, targets
from tvmopt.kernels import cpu_gemm
from tvmopt.kernels.defaults import default_schedule
from tvmopt.prepare import ModelOptions
from tvmopt.tasks import kernels


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_untuned_convs_and_matmuls_are_scheduled_and_match_onnxruntime(tmp_path, layout):
    """3x3, strided 3x3 and 1x1 convs, matmuls (plain, batched, with epilogues), fp32."""
    path = models.library_layers(tmp_path / "m.onnx")
    result = build.build(path, targets.resolve("host"), tmp_path / "m.so",
                         options=ModelOptions(layout=layout))
    providers = result.manifest["kernel_providers"]
    anchors = [k for k in providers if "conv2d" in k or "matmul" in k]
    assert len(anchors) >= 6 and all(providers[k] == "default" for k in anchors), providers
    model = runtime.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=2)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def test_a_conv_kernel_is_parallel_and_vectorised_by_the_target_simd_width(tmp_path):
    host = targets.resolve("host").tvm_target()
    mod = prepare.prepare(models.tiny_conv(tmp_path / "c.onnx"), targets.resolve("host")).mod
    (conv,) = [f for name, f in kernels(mod).items() if "conv2d" in name]
    script = default_schedule(conv, host).mod["main"].script()
    assert "T.parallel(" in script and "T.vectorized(" in script and "T.unroll(" in script
    # the tile's vector divides the 14-wide rows: 14 lanes on AVX-512 or a smaller divisor
    lanes = cpu_gemm.vector_lanes(host)
    width = max(d for d in range(1, min(14, lanes) + 1) if 14 % d == 0)
    assert f"T.vectorized(T.int64({width}))" in script


def test_neon_and_avx512_vector_widths():
    arm = targets.resolve("arm-cortex-a72").tvm_target()
    x86 = targets.resolve("x86-skylake-avx512").tvm_target()
    assert (cpu_gemm.vector_lanes(arm), cpu_gemm.vector_lanes(x86)) == (4, 16)


def test_elementwise_and_row_reduction_kernels_run_in_parallel_vectorised(tmp_path):
    """A BERT attention block, fp32: every kernel gets a default schedule (softmax and layer norm
    rows in parallel, transposes and elementwise kernels vectorised and parallel) and the model
    still matches ONNX Runtime."""
    import numpy as np

    host = targets.resolve("host")
    path = models.attention_block(tmp_path / "a.onnx", seq=128)
    result = build.build(path, host, tmp_path / "a.so")
    assert set(result.manifest["kernel_providers"].values()) == {"default"}
    mask = np.ones((2, 128), np.int64)
    mask[:, 96:] = 0
    inputs = {"x": np.random.default_rng(1).standard_normal((2, 128, 128)).astype(np.float32),
              "attention_mask": mask}
    (mismatch,) = runtime.compare(runtime.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-4, mismatch

    found = kernels(prepare.prepare(path, host).mod)
    scripts = {name: default_schedule(f, host.tvm_target()).mod["main"].script()
               for name, f in found.items() if "softmax" in name or "layer_norm" in name
               or "transpose" in name}
    assert len(scripts) >= 3 and all("T.parallel(" in s for s in scripts.values()), scripts
    assert all("T.vectorized(" in s for name, s in scripts.items() if "transpose" in name)


def test_kernels_too_small_for_threads_stay_on_one_core(tmp_path):
    path = models.one_relu(tmp_path / "relu.onnx")
    (relu,) = kernels(prepare.prepare(path, targets.resolve("host")).mod).values()
    script = default_schedule(relu, targets.resolve("host").tvm_target()).mod["main"].script()
    assert "T.vectorized(T.int64(4))" in script and "T.parallel(" not in script
