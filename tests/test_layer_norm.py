"""The kernel library's layer and RMS norms (tvmopt/kernels/library/layer_norm.py, rms_norm.py):
which norms they take, their instances compile for Hopper (nvcc, no GPU), and their NumPy
references normalise. tests/test_gpu.py runs them against ONNX Runtime."""

import numpy as np
import pytest

import instances
import zoo
from tvmopt import prepare, targets
from tvmopt.kernels import library
from tvmopt.kernels.library import layer_norm, rms_norm
from tvmopt.prepare import ModelOptions


def test_a_transformers_layer_norms_are_library_layers(tmp_path):
    """BERT-style encoder, fp16: the embedding LN and both LNs of each of 2 layers (hidden 32)."""
    path = zoo.bert_encoder(tmp_path / "bert.onnx")
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(
        precision="fp16", input_shapes={"input_ids": (2, 16), "attention_mask": (2, 16)})).mod
    norms = [l for l in library.layers(mod).values() if l.op is layer_norm.OP]
    assert norms and {(l.geometry.rows, l.geometry.cols) for l in norms} == {(32, 32)}
    assert all(l.geometry.eps == pytest.approx(1e-12) and l.params == (l.geometry.eps,)
               for l in norms)
    assert sorted(norms[0].args) == ["beta", "gamma", "x"]


def test_layer_norms_the_kernel_cannot_run_stay_on_tvm_kernels(tmp_path):
    """fp32 (no mixed precision) and rows of a length not a multiple of 8."""
    path = zoo.bert_encoder(tmp_path / "bert.onnx", hidden=36, heads=4)
    shapes = {"input_ids": (2, 16), "attention_mask": (2, 16)}
    for precision in ("fp16", "fp32"):
        mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(
            precision=precision, input_shapes=shapes)).mod
        assert not [l for l in library.layers(mod).values() if l.op is layer_norm.OP]


def test_the_reference_is_a_layer_norm():
    g = layer_norm.LayerNormGeometry(3, 768, 1e-5)
    arrays = layer_norm.OP.inputs(g, {}, np.random.default_rng(0))
    out = layer_norm.OP.reference(g, {**arrays, "gamma": np.ones(768, np.float16),
                                      "beta": np.zeros(768, np.float16)})
    np.testing.assert_allclose(out.mean(axis=-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=-1), 1, atol=1e-4)
    assert [layer_norm.LayerNormGeometry(1, c, 0).chunks for c in (8, 256, 768, 4096)] == [
        1, 1, 4, 16]


def test_a_t5_encoders_rms_norms_are_library_layers(tmp_path):
    """T5-style encoder, fp16: both norms of each of 2 layers and the final one (hidden 32), with
    x and the weight as arguments and T5's eps."""
    path = zoo.t5_encoder(tmp_path / "t5.onnx")
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(
        precision="fp16", input_shapes={"input_ids": (2, 16), "attention_mask": (2, 16)})).mod
    layers = library.layers(mod)
    norms = {name: l for name, l in layers.items() if l.op is rms_norm.OP}
    calls = sum(str(mod["main"]).count(f"R.call_tir({name},") for name in norms)
    assert calls == 5 and {(l.geometry.rows, l.geometry.cols) for l in norms.values()} == {(32, 32)}
    assert all(l.geometry.eps == pytest.approx(1e-6) for l in norms.values())
    assert [sorted(l.args) for l in norms.values()] == [["gamma", "x"]] * len(norms)
    assert not [l for l in layers.values() if l.op is layer_norm.OP]


def test_the_rms_reference_has_unit_root_mean_square():
    g = layer_norm.LayerNormGeometry(3, 512, 0)
    arrays = rms_norm.OP.inputs(g, {}, np.random.default_rng(0))
    assert sorted(arrays) == ["gamma", "x"]
    out = rms_norm.OP.reference(g, {**arrays, "gamma": np.ones(512, np.float16)})
    np.testing.assert_allclose(np.sqrt((out ** 2).mean(axis=-1)), 1, atol=1e-5)
    assert abs(out.mean()) > 0.1  # not centred: the inputs' mean (1) shows through


@pytest.mark.parametrize("op", [layer_norm.OP, rms_norm.OP], ids=lambda op: op.name)
def test_the_norm_instances_compile_for_hopper(tmp_path, monkeypatch, op):
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path))
    g = layer_norm.LayerNormGeometry(128, 768, 1e-5)
    spec = op.instance(g, layer_norm.CATALOGUE[0], "sm_90a")
    assert instances.exports_its_symbol(spec)
