"""The kernel library as an op registry (tvmopt/kernels/library/): an op is one module over a
CUDA source in a file; what an instance is compiled from (headers included) keys the kernel
cache; a failed or hung nvcc leaves what is needed to see why. Compiling needs nvcc but no GPU."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from ops import bias_relu
from tvmopt import build, prepare, targets
from tvmopt.errors import TvmoptError
from tvmopt.kernels import library
from tvmopt.kernels.library import nvcc, registry
from tvmopt.kernels.library.instance import included_sources
from tvmopt.prepare import ModelOptions

HOPPER = "cuda-sm90a"
FP16 = ModelOptions(precision="fp16")
SOURCES = Path(__file__).with_name("kernel_sources.json")


def _bias_relu_model(path: Path) -> Path:
    bias = numpy_helper.from_array(np.linspace(-1, 1, 64, dtype=np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "bias_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])], [bias])
    return models._save(graph, path)


def test_an_op_is_one_module_and_one_line(tmp_path, monkeypatch):
    """The toy bias + ReLU op (tests/ops/: a module and a .cuh) registered with one line: its
    pattern partitions the model, its instance is compiled by nvcc and linked, and the build
    calls it for the layer. Unregistered, nothing in the model is the library's."""
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path / "cache"))
    path = _bias_relu_model(tmp_path / "m.onnx")
    preset = targets.resolve(HOPPER)
    assert library.layers(prepare.prepare(path, preset, FP16).mod) == {}

    monkeypatch.setattr(registry, "OPS", [*registry.OPS, bias_relu.OP])
    (name, layer), = library.layers(prepare.prepare(path, preset, FP16).mod).items()
    assert layer.op is bias_relu.OP and layer.geometry == bias_relu.BiasReluGeometry(4, 64)
    assert registry.layer_from_json(layer.to_json()) == layer

    lib = tmp_path / "m.so"
    result = build.build(path, preset, lib, options=FP16)
    kernel = result.manifest["library_kernels"][name]
    assert (kernel["symbol"], kernel["tactic"]) == ("toy_bias_relu_threads256", "threads256")
    assert kernel["layer"] == "bias + ReLU 4x64"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                              text=True, check=True).stdout
    assert "__tvm_ffi_toy_bias_relu_threads256" in exported


def _catalogue_sources() -> dict[str, str]:
    """{symbol: sha256 of its source and the csrc headers it includes} for every tactic of every
    registered op, over layers that reach each variant of its instantiation."""
    from tvmopt.kernels.library import attention, conv2d, gemm, layer_norm
    from tvmopt.kernels.library.cutlass import ACTIVATIONS, Epilogue

    epilogues = [Epilogue(bias, act, residual) for bias in (False, True)
                 for act in ACTIVATIONS for residual in (False, True)]
    geometries = [gemm.GemmGeometry(64, 64, 64, 1, layout, e)
                  for layout in ("row", "col") for e in [*epilogues, Epilogue(gate=True)]]
    geometries += [conv2d.ConvGeometry(1, 8, 8, 16, 16, 3, 3, (1, 1, 1, 1), (1, 1), (1, 1), e)
                   for e in epilogues]
    geometries += [attention.AttentionGeometry(1, 2, 16, 16, 64, 0.125, mask, dtype,
                                               causal=causal)
                   for mask, dtype in ((None, None), ((1, 16), "float16"), ((1, 16), "float32"))
                   for causal in (None, 0)]
    geometries += [layer_norm.LayerNormGeometry(128, cols, 1e-5) for cols in (768, 4096)]
    found = {}
    for op, g in ((op, g) for op in registry.OPS for g in geometries
                  if isinstance(g, op.geometry_type)):
        for tactic in op.catalogue(g):
            instance = op.instance(g, tactic, "sm_90a")
            text = "\0".join([instance.source, *(p for pair in included_sources(instance.source)
                                                 for p in pair)])
            found[instance.symbol] = hashlib.sha256(text.encode()).hexdigest()
    return found


def test_instance_sources_stay_byte_stable():
    """Every catalogue instance's source and headers as recorded in tests/kernel_sources.json:
    a change to either compiles that instance again in every user's kernel cache. When that is
    intended, rewrite the record: python tests/test_library_ops.py --write."""
    current = _catalogue_sources()
    assert current == _catalogue_sources()  # generated deterministically
    recorded = json.loads(SOURCES.read_text())
    changed = sorted(s for s in current.keys() & recorded.keys() if current[s] != recorded[s])
    assert (changed, sorted(current.keys() - recorded.keys()),
            sorted(recorded.keys() - current.keys())) == ([], [], []), (
        "kernel sources changed: every kernel cache compiles these again; if intended, run "
        "python tests/test_library_ops.py --write")
    assert len(current) > 100


def test_a_changed_header_is_compiled_again_with_a_reason(tmp_path, monkeypatch, caplog):
    """The headers an instance includes are in its cache key: the same instantiation over a
    changed header is a new entry, and the log says why it was compiled again."""
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path / "cache"))
    header = tmp_path / "bias_relu.cuh"
    shutil.copy(bias_relu.HEADER, header)
    op = bias_relu.BiasRelu(header)
    g = bias_relu.BiasReluGeometry(4, 64)
    instance = op.instance(g, op.default_tactic(g), "sm_90a")
    first = nvcc.compile_all({instance.symbol: instance.source}, "sm_90a")
    assert nvcc.compile_all({instance.symbol: instance.source}, "sm_90a") == first  # cached
    header.write_text(header.read_text() + "// changed\n")
    with caplog.at_level(logging.INFO):
        second = nvcc.compile_all({instance.symbol: instance.source}, "sm_90a")
    assert second[instance.symbol].name != first[instance.symbol].name
    assert "1 instance(s) in" in caplog.text and "compiled from other sources" in caplog.text
    assert len(list((tmp_path / "cache" / "kernels").glob(f"{instance.symbol}-*.o"))) == 2


def test_a_failed_compile_keeps_its_source_and_nvccs_log(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path))
    source = '#include "ffi.cuh"\nstatic void Run() { undeclared_name(); }\n'
    with pytest.raises(TvmoptError) as failure:
        nvcc.compile_all({"broken": source}, "sm_90a")
    kept = tmp_path / "kernels" / "failed"
    message = str(failure.value)
    assert "nvcc failed on broken:" in message and "undeclared_name" in message
    assert f"{kept / 'broken'}.cu, .log" in message
    assert (kept / "broken.cu").read_text() == source
    assert "undeclared_name" in (kept / "broken.log").read_text()


def test_nvcc_runs_with_a_timeout(tmp_path, monkeypatch):
    """A compile past TVMOPT_NVCC_TIMEOUT is killed with its whole process group and fails with
    the setting named; a setting that is not a positive number is refused before any nvcc."""
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path))
    g = bias_relu.BiasReluGeometry(4, 64)
    instance = bias_relu.OP.instance(g, bias_relu.OP.default_tactic(g), "sm_90a")
    monkeypatch.setenv("TVMOPT_NVCC_TIMEOUT", "0.05")
    failed = {}
    assert nvcc.compile_all({instance.symbol: instance.source}, "sm_90a", failed=failed) == {}
    assert "nvcc took longer than 0.05 s" in failed[instance.symbol]
    assert "TVMOPT_NVCC_TIMEOUT" in failed[instance.symbol]
    survivors = subprocess.run(["pgrep", "-f", f"{instance.symbol}.cu"], capture_output=True,
                               text=True).stdout.split()
    assert [pid for pid in survivors if int(pid) != os.getpid()] == []
    monkeypatch.setenv("TVMOPT_NVCC_TIMEOUT", "soon")
    with pytest.raises(TvmoptError, match="TVMOPT_NVCC_TIMEOUT='soon' is not a number"):
        nvcc.compile_all({instance.symbol: instance.source}, "sm_90a")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    SOURCES.write_text(json.dumps(_catalogue_sources(), indent=1, sort_keys=True) + "\n")
