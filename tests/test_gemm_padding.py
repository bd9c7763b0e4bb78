"""A GEMM by a constant weight whose N or K is not a multiple of 8 (an LM head over a vocabulary:
GPT-2's N is 50257) runs the library's GEMM on a weight padded with zeros to one, its output
sliced back (tvmopt/kernels/library/gemm_padding.py): which layer it becomes on Hopper (fp16), and
the rewrite checked on the CPU, where the model and its padded form both run as TVM kernels."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from test_attention_forms import _pre_library, _run_on_cpu
from tvmopt import prepare, targets
from tvmopt.kernels import library
from tvmopt.kernels.library import gemm, gemm_padding
from tvmopt.prepare import ModelOptions

ROWS, K = 8, 64


def _head(path, *, n: int = 1001, k: int = K, bias: bool = False, form: str = "matmul"):
    """x @ w (+ b) with N outputs: an ONNX MatMul on x [1, ROWS, k] and w [k, n]; `form="gemm"`:
    a Gemm with transB on x [ROWS, k] and w [n, k] (the weight reaches the graph transposed, as a
    tied embedding does); `form="input"`: the MatMul's w is the model's second input."""
    rng = np.random.default_rng(3)
    x_shape = [ROWS, k] if form == "gemm" else [1, ROWS, k]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = [numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")] if bias \
        else []
    if form == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [k, n]))
    else:
        inits.append(models._const(rng, "w", (n, k) if form == "gemm" else (k, n), 0.2))
    if form == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w"] + (["b"] if bias else []), ["y"], transB=1)]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["xw" if bias else "y"])]
        nodes += [helper.make_node("Add", ["xw", "b"], ["y"])] if bias else []
    graph = helper.make_graph(nodes, "head", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, x_shape[:-1] + [n])], inits)
    return models._save(graph, path)


def _shapes(k: int = K, form: str = "matmul") -> dict:
    return {"x": (ROWS, k) if form == "gemm" else (1, ROWS, k)}


@pytest.mark.parametrize("form", ["matmul", "gemm"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [K, K - 1])
def test_a_gemm_of_odd_sizes_runs_the_library_padded_to_multiples_of_8(tmp_path, form, bias, k):
    """N = 1001 (and K = 63) become 1008 (and 64); the bias, padded too, stays in the epilogue.
    Without a bias the fp32 result (the model's output) is the GEMM's fp16 one, cast."""
    path = _head(tmp_path / "head.onnx", k=k, bias=bias, form=form)
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(
        precision="fp16", input_shapes=_shapes(k, form))).mod
    (layer,) = library.layers(mod).values()
    g = layer.geometry
    assert layer.op is gemm.OP
    assert (g.m, g.n, g.k, g.batch, g.b_layout) == (ROWS, 1008, 64, 1, "row")
    assert g.epilogue.name == ("bias" if bias else "plain")
    assert sorted(layer.args) == (["a", "b", "bias"] if bias else ["a", "b"])


@pytest.mark.parametrize("k, bias", [(K, False), (K, True), (K - 1, True)])
def test_the_padded_gemm_computes_what_the_model_computes(tmp_path, k, bias):
    import tvm

    path = _head(tmp_path / "head.onnx", k=k, bias=bias)
    mod = tvm.relax.transform.FoldConstant()(_pre_library(path, _shapes(k)))
    padded = gemm_padding.canonicalize(mod)
    script = padded["main"].script(show_meta=False)
    assert "R.strided_slice" in script and ("R.nn.pad" in script) == (k % 8 != 0)
    x = np.random.default_rng(0).standard_normal((1, ROWS, k)).astype(np.float32)
    expected, found = _run_on_cpu(mod, [x]), _run_on_cpu(padded, [x])
    assert found.shape == expected.shape == (1, ROWS, 1001)
    assert np.abs(expected).max() > 0.5
    # fp16 rounding apart: without a bias the padded GEMM's result is rounded to fp16
    np.testing.assert_allclose(found, expected, atol=5e-3, rtol=2e-3)


@pytest.mark.parametrize("n, form", [
    (1008, "matmul"),  # aligned already
    (1001, "input"),  # the weight is not a constant
    (10, "matmul"),  # padding to 16 would add 60% to the work
])
def test_gemms_that_need_no_padding_or_cannot_have_it_are_left_as_they_are(tmp_path, n, form):
    import tvm

    path = _head(tmp_path / "head.onnx", n=n, bias=True, form=form)
    shapes = {**_shapes(), **({"w": (K, n)} if form == "input" else {})}
    mod = tvm.relax.transform.FoldConstant()(_pre_library(path, shapes))
    assert gemm_padding.canonicalize(mod) is mod
