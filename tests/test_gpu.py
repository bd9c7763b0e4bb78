"""On an NVIDIA GPU (marked `gpu`, skipped elsewhere): the `cuda` family resolves to this GPU's
preset and its artifacts run and match ONNX Runtime."""

import pytest

import models
import tvmopt
from tvmopt import build, runtime, targets

pytestmark = pytest.mark.gpu


def test_cuda_family_is_this_gpus_preset():
    arch = targets.local_cuda_arch()
    preset = targets.resolve("cuda")
    assert arch is not None and preset.target["arch"] in (arch, arch + "a")


@pytest.mark.parametrize("name", models.LIGHT_MODELS)
def test_cuda_artifact_matches_onnxruntime(tmp_path, name):
    path = models.LIGHT_DIR / f"light_{name}.onnx"
    lib = build.build(path, targets.resolve("cuda"), tmp_path / "m.so").path
    model = tvmopt.load(lib)
    assert model.device.dlpack_device_type() == 2  # kDLCUDA
    inputs = runtime.random_inputs(model.inputs, seed=5)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def test_cuda_fp16_artifact_is_close_to_onnxruntime(tmp_path, conv_model):
    options = build.BuildOptions(precision="fp16")
    lib = build.build(conv_model, targets.resolve("cuda"), tmp_path / "m.so", options=options).path
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=6)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(conv_model, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches
