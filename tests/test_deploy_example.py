"""The C++ deployment example (examples/cpp_deploy): built with the wheels' TVM runtime, it runs a
tvmopt artifact on x86, an ARM artifact under qemu-aarch64 and (on a GPU host) a CUDA artifact with
CUTLASS kernels and CUDA graphs, matching tvmopt's Python runtime."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import models
import tvmopt
from tvmopt import build, runtime, targets
from tvmopt.prepare import ModelOptions

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp_deploy"
# Where .ci/run puts the aarch64 runtime (examples/cpp_deploy/fetch_aarch64_runtime.sh).
AARCH64_RUNTIME = Path(os.environ.get("TVMOPT_AARCH64_RUNTIME",
                                      Path.home() / ".cache" / "tvmopt" / "aarch64-runtime"))


def _compile(out: Path, *arch_args) -> Path:
    subprocess.run(["bash", str(EXAMPLE / "build.sh"), str(out), *arch_args], check=True,
                   capture_output=True, text=True)
    return out


def _run(cmd, inputs: dict, spec_outputs, tmp_path) -> dict:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir(exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    for name, value in inputs.items():
        value.tofile(in_dir / f"{name}.bin")
    done = subprocess.run([*cmd, "--inputs", str(in_dir), "--outputs", str(out_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {s.name: np.fromfile(out_dir / f"{s.name}.bin", dtype=s.dtype).reshape(s.shape)
            for s in spec_outputs}


@pytest.fixture(scope="module")
def deploy_x86(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("cpp") / "tvmopt_deploy")


@pytest.mark.parametrize("fixture", ["conv_model", "two_output_model"])
def test_cpp_example_runs_an_x86_artifact(request, tmp_path, deploy_x86, fixture):
    lib = build.build(request.getfixturevalue(fixture), targets.resolve("host"), tmp_path / "m.so").path
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=3)
    got = _run([str(deploy_x86), str(lib)], inputs, model.outputs, tmp_path)
    expected = model(inputs)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)


def test_cpp_example_reports_a_library_without_manifest(tmp_path, deploy_x86):
    lib = tmp_path / "plain.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-x", "c++", "-", "-o", str(lib)],
                   input="int f() { return 1; }", text=True, check=True)
    done = subprocess.run([str(deploy_x86), str(lib)], capture_output=True, text=True)
    assert done.returncode == 1 and "no tvmopt_manifest" in done.stderr


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or not (AARCH64_RUNTIME / "libtvm_runtime.so").exists(),
                    reason="needs qemu-user and the aarch64 TVM runtime "
                           "(examples/cpp_deploy/fetch_aarch64_runtime.sh ~/.cache/tvmopt/aarch64-runtime)")
def test_arm_artifact_runs_under_qemu_and_matches_x86(tmp_path, conv_model):
    arm_lib = build.build(conv_model, targets.resolve("arm-cortex-a72"), tmp_path / "arm.so").path
    x86 = tvmopt.load(build.build(conv_model, targets.resolve("host"), tmp_path / "x86.so").path)
    deploy_arm = _compile(tmp_path / "tvmopt_deploy_arm", "aarch64", str(AARCH64_RUNTIME))
    inputs = runtime.random_inputs(x86.inputs, seed=4)
    got = _run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(deploy_arm), str(arm_lib)],
               inputs, x86.outputs, tmp_path)
    expected = x86(inputs)
    for name in expected:  # different CPUs fuse multiply-adds differently: not bit-identical
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cpp_example_runs_a_cuda_artifact_with_library_kernels(tmp_path, deploy_x86):
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    result = build.build(path, targets.resolve("cuda"), tmp_path / "m.so", cuda_graph=True,
                         options=ModelOptions(precision="fp16", layout="NHWC"))
    assert len(result.manifest["library_kernels"]) == 2 and result.manifest["cuda_graph"]
    model = tvmopt.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=3)
    got = _run([str(deploy_x86), str(result.path), "--repeat", "20"], inputs, model.outputs,
               tmp_path)
    expected = model(inputs)
    for name in expected:  # the same kernels on the same inputs
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    mismatches = runtime.compare(got, runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches
