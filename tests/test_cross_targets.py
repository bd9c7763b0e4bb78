"""Builds for other machines, made on this x86 one: the right ELF, a manifest, a clear load error."""

import json

import pytest

from conftest import assert_one_line_error
from tvmopt import build, runtime, targets
from tvmopt.errors import TvmoptError


@pytest.mark.parametrize("preset,machine", [
    ("arm-cortex-a72", "aarch64"), ("arm-neoverse-v1", "aarch64"),
    ("x86-skylake-avx512", "x86_64"), ("cuda-sm90a", "x86_64"),
])
def test_cross_build_elf_machine_and_manifest(tmp_path, conv_model, preset, machine):
    p = targets.resolve(preset)
    result = build.build(conv_model, p, tmp_path / f"{preset}.so")
    manifest = runtime.read_manifest(result.path)
    assert manifest["elf_machine"] == machine
    assert manifest["target_key"] == p.key and manifest["preset"] == preset


def test_arm_artifact_refuses_to_load_on_x86(tmp_path, conv_model, invoke):
    lib = build.build(conv_model, targets.resolve("arm-cortex-a72"), tmp_path / "arm.so").path
    with pytest.raises(TvmoptError, match="built for llvm/aarch64/cortex-a72 .*this machine is x86_64"):
        runtime.load(lib)
    result = invoke("inspect", lib)
    assert result.exit_code == 0 and "aarch64 ELF" in result.output


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch, conv_model, invoke):
    (tmp_path / "arm-nocc.json").write_text(json.dumps({
        "description": "ARM with a compiler that is not installed", "family": "arm",
        "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"},
        "cc": "aarch64-linux-gnu-g++-0"}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    result = invoke("build", conv_model, "--target", "arm-nocc", "-o", tmp_path / "o.so")
    assert_one_line_error(result, "aarch64-linux-gnu-g++-0", "apt-get install g++-aarch64-linux-gnu")
    assert not (tmp_path / "o.so").exists()
