"""Transformer-layer fusions into the kernel library's epilogues (Hopper, fp16): the tanh GELU
as the exporters write it becomes the GEMM's epilogue, a gated MLP's product the up GEMM's.
Checked on the CPU: which layers the library takes, and that the rewrite computes what the
exported graph computes."""

import math

import numpy as np
import pytest

import instances
import zoo
from test_attention_forms import _pre_library, _run_on_cpu
from tvmopt import prepare, targets
from tvmopt.kernels import library
from tvmopt.kernels.library import cutlass, projections
from tvmopt.prepare import ModelOptions


def _mlp(path, gelu: str, exporter: str):
    """Linear(64 -> 256), a tanh GELU as `gelu` spells it, Linear(256 -> 64)."""
    torch = zoo._torch()
    nn = torch.nn

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.proj = nn.Linear(64, 256), nn.Linear(256, 64)

        def forward(self, x):
            h = self.fc(x)
            if gelu == "torch":  # F.gelu(approximate="tanh")
                h = nn.functional.gelu(h, approximate="tanh")
            else:  # transformers' NewGELUActivation (GPT-2's "gelu_new")
                h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)
                                                * (h + 0.044715 * torch.pow(h, 3.0))))
            return self.proj(h)

    torch.manual_seed(0)
    model = zoo._export(Mlp(), (torch.randn(2, 16, 64),), path, input_names=["x"],
                        output_names=["y"], dynamic_axes={}, exporter=exporter,
                        opset=18 if exporter == "dynamo" else 17)
    return zoo._save(model, path)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("gelu", ["torch", "gelu_new"])
def test_the_tanh_gelu_is_the_gemms_epilogue(tmp_path, gelu, exporter):
    path = _mlp(tmp_path / "mlp.onnx", gelu, exporter)
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(precision="fp16")).mod
    epilogues = sorted(l.geometry.epilogue.name for l in library.layers(mod).values())
    assert epilogues == ["bias", "bias_gelu_tanh"]


def test_folding_the_tanh_gelu_computes_what_the_export_computes(tmp_path):
    import tvm

    path = _mlp(tmp_path / "mlp.onnx", "gelu_new", "legacy")
    mod = _pre_library(path, {"x": (2, 16, 64)})
    folded = cutlass.fold_tanh_gelu(tvm.relax.transform.FoldConstant()(mod))
    assert "R.nn.gelu_tanh" in folded["main"].script() and "R.tanh" not in folded["main"].script()
    x = [np.random.default_rng(0).standard_normal((2, 16, 64)).astype(np.float32) * 3]
    expected, found = _run_on_cpu(mod, x), _run_on_cpu(folded, x)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(found, expected, atol=2e-2, rtol=2e-2)


def test_a_gelu_with_other_constants_is_left_as_it_is(tmp_path):
    """0.5 x (1 + tanh(0.8 (x + 0.05 x^3))) is not GELU: nothing is folded."""
    from tvm import relax

    x = relax.Var("x", relax.TensorType((4, 8), "float16"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            c = lambda v: relax.const(v, "float16")  # noqa: E731
            cube = bb.emit(relax.op.multiply(bb.emit(relax.op.multiply(x, x)), x))
            inner = bb.emit(relax.op.add(x, bb.emit(relax.op.multiply(cube, c(0.05)))))
            t = bb.emit(relax.op.tanh(bb.emit(relax.op.multiply(inner, c(0.8)))))
            out = bb.emit_output(relax.op.multiply(bb.emit(relax.op.multiply(x, c(0.5))),
                                                   bb.emit(relax.op.add(t, c(1.0)))))
        bb.emit_func_output(out)
    mod = bb.get()
    folded = cutlass.fold_tanh_gelu(mod)["main"].script()
    assert "gelu_tanh" not in folded and "R.tanh" in folded


def _gated_mlp(path):
    """A Llama-style gated MLP, silu(x W_gate) * (x W_up) W_down."""
    torch = zoo._torch()
    nn = torch.nn

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.up = nn.Linear(64, 96, bias=False), nn.Linear(64, 96, bias=False)
            self.down = nn.Linear(96, 64, bias=False)

        def forward(self, x):
            return self.down(nn.functional.silu(self.gate(x)) * self.up(x))

    torch.manual_seed(0)
    model = zoo._export(Gated(), (torch.randn(2, 16, 64),), path, input_names=["x"],
                        output_names=["y"], dynamic_axes={}, exporter="legacy", opset=17)
    return zoo._save(model, path)


def test_a_gated_mlps_product_is_the_up_projections_epilogue(tmp_path):
    """silu(x W_gate) * (x W_up): the gate's SiLU is its GEMM's epilogue and the product the up
    GEMM's (acc * gate), so no TVM kernel is left between the GEMMs."""
    mod = prepare.prepare(_gated_mlp(tmp_path / "mlp.onnx"), targets.resolve("cuda-sm90a"),
                          ModelOptions(precision="fp16")).mod
    layers = {name: l for name, l in library.layers(mod).items() if l.op.name == "gemm"}
    # (the down projection writes the model's fp32 output: a TVM kernel)
    assert sorted(l.geometry.epilogue.name for l in layers.values()) == ["gated", "silu"]
    (gated,) = [l for l in layers.values() if l.geometry.epilogue.gate]
    assert sorted(gated.args) == ["a", "b", "gate"]
    assert "R.multiply" not in mod["main"].script()


def test_the_gated_epilogues_reference_is_the_product_of_the_two_halves():
    """What `tune` checks a gated GEMM's tactics against: A @ B times the gate, elementwise."""
    from tvmopt.kernels.library import gemm

    g = gemm.GemmGeometry(16, 24, 32, 1, "row", cutlass.Epilogue(gate=True))
    arrays = gemm.OP.inputs(g, {"a": 0, "b": 1, "gate": 2}, np.random.default_rng(0))
    assert arrays["gate"].shape == (16, 24)
    a, b = (arrays[r].astype(np.float32) for r in "ab")
    np.testing.assert_allclose(gemm.OP.reference(g, arrays),
                               (a @ b) * arrays["gate"].astype(np.float32), rtol=1e-6)


def test_the_gated_gemm_instance_compiles_for_hopper(tmp_path, monkeypatch):
    """nvcc (no GPU) compiles the gated GEMM: CUTLASS's epilogue visitor tree acc * C."""
    from tvmopt.kernels.library import gemm

    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path / "cache"))
    g = gemm.GemmGeometry(512, 5632, 2048, 1, "row", cutlass.Epilogue(gate=True))
    spec = gemm.OP.instance(g, gemm.OP.default_tactic(g), "sm_90a")
    assert "GatedEpilogue" in spec.source
    assert instances.exports_its_symbol(spec)


def _bert_attention(path):
    import attention_forms as forms

    return forms.export("bert_eager", path, batch=2, seq=32)


BERT_SHAPES = {"x": (2, 32, 128), "attention_mask": (2, 32)}


def test_q_k_and_v_projections_are_one_gemm_that_attention_reads_in_place(tmp_path):
    mod = prepare.prepare(_bert_attention(tmp_path / "bert.onnx"), targets.resolve("cuda-sm90a"),
                          ModelOptions(precision="fp16", input_shapes=BERT_SHAPES)).mod
    layers = list(library.layers(mod).values())
    gemms = sorted((l.geometry.n, l.geometry.k) for l in layers if l.op.name == "gemm")
    assert gemms == [(128, 128), (3 * 128, 128)]  # Q, K and V as one; the output projection
    (attention,) = [l for l in layers if l.op.name == "attention"]
    pitch, offsets = attention.geometry.packed[0::2], attention.geometry.packed[1::2]
    assert set(pitch) == {3 * 128} and sorted(offsets) == [0, 128, 256]


def test_combined_projections_compute_what_the_three_computed(tmp_path):
    import tvm

    mod = _pre_library(_bert_attention(tmp_path / "bert.onnx"), BERT_SHAPES)
    mod = tvm.relax.transform.FoldConstant()(mod)
    combined = projections.combine_projections(mod)
    matmuls = [m["main"].script().count("R.matmul(") for m in (mod, combined)]
    assert matmuls == [6, 4]  # Q, K, V, scores, context, output -> QKV, scores, ...
    rng = np.random.default_rng(0)
    mask = np.ones((2, 32), np.int64)
    mask[1, 24:] = 0
    arrays = [rng.standard_normal((2, 32, 128)).astype(np.float32), mask]
    expected, found = _run_on_cpu(mod, arrays), _run_on_cpu(combined, arrays)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(found, expected, atol=2e-2, rtol=2e-2)


def test_projections_feeding_activations_keep_their_own_gemms_and_epilogues(tmp_path):
    """A gated MLP's gate (SiLU) and up projections read one tensor: the gate's activation is
    its GEMM's epilogue, so they stay two GEMMs."""
    import tvm

    mod = _pre_library(_gated_mlp(tmp_path / "mlp.onnx"), {"x": (2, 16, 64)})
    mod = tvm.relax.transform.FoldConstant()(mod)
    assert projections.combine_projections(mod) is mod


def test_the_erf_gelu_epilogue_computes_the_erf_gelu(tmp_path):
    """GeluErf (csrc/activations.cuh), compiled by nvcc for the CPU and evaluated on a grid:
    within 3e-6 of x * Phi(x) everywhere and 3e-5 relative where |x| < 4, far below fp16's
    rounding; an error in a coefficient shows at once."""
    import subprocess

    from tvmopt.kernels.library import nvcc
    from tvmopt.kernels.library.instance import CSRC

    tools = nvcc.cuda_toolchain()
    xs = np.concatenate([np.linspace(-12, 12, 4801), [0.0, 1e-30, -1e-30, 4.0, -4.0, 40.0]])
    (tmp_path / "gelu.cu").write_text(
        '#include <cstdio>\n#include "activations.cuh"\n'
        "int main() { float x; tvmopt::GeluErf<float> gelu;\n"
        '  while (std::scanf("%f", &x) == 1) std::printf("%.9g\\n", gelu(x)); }\n')
    subprocess.run([str(tools.nvcc), "-std=c++17", f"-I{CSRC}", *(f"-I{p}" for p in tools.includes),
                    str(tmp_path / "gelu.cu"), "-o", str(tmp_path / "gelu")],
                   check=True, capture_output=True, timeout=600)
    xs32 = xs.astype(np.float32)
    out = subprocess.run([str(tmp_path / "gelu")], input="\n".join(f"{x:.9g}" for x in xs32),
                         capture_output=True, text=True, check=True).stdout.split()
    got = np.array(out, dtype=np.float64)
    x = xs32.astype(np.float64)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(got - exact).max() < 3e-6
    inner = np.abs(x) < 4
    assert (np.abs(got - exact)[inner] <= 3e-5 * np.abs(exact[inner])).all()
