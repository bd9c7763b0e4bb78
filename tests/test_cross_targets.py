"""Builds for other machines, made on this x86 one: the right ELF and device code, a manifest, clear
errors when a toolchain or device is missing, and family names that pick this machine's device."""

import json
import shutil

import pytest

from conftest import assert_one_line_error
from tvmopt import build, runtime, targets, toolchain
from tvmopt import manifest as artifact_manifest
from tvmopt.errors import TvmoptError


@pytest.mark.parametrize("preset,machine", [
    ("arm-cortex-a72", "aarch64"), ("arm-neoverse-v1", "aarch64"),
    ("x86-skylake-avx512", "x86_64"), ("cuda-sm90a", "x86_64"), ("rocm-gfx90a", "x86_64"),
])
def test_cross_build_elf_machine_and_manifest(tmp_path, conv_model, preset, machine):
    p = targets.resolve(preset)
    result = build.build(conv_model, p, tmp_path / f"{preset}.so")
    manifest = artifact_manifest.read(result.path)
    assert manifest["elf_machine"] == machine
    assert manifest["target_key"] == p.key and manifest["preset"] == preset


@pytest.mark.parametrize("preset,arch", [("rocm-gfx90a", "gfx90a"), ("rocm-gfx942", "gfx942")])
def test_rocm_library_holds_an_amdgpu_code_object_for_its_arch(tmp_path, conv_model, invoke,
                                                              preset, arch):
    lib = build.build(conv_model, targets.resolve(preset), tmp_path / "rocm.so").path
    assert artifact_manifest.amdgpu_code_objects(lib) == [arch]
    with pytest.raises(TvmoptError, match=f"built for rocm/{arch} and needs an AMD GPU"):
        runtime.load(lib)
    result = invoke("inspect", lib)
    assert result.exit_code == 0 and f"AMDGPU code object(s) for {arch}" in result.output


def test_cpu_libraries_hold_no_amdgpu_code(tmp_path, conv_model):
    lib = build.build(conv_model, targets.resolve("host"), tmp_path / "cpu.so").path
    assert artifact_manifest.amdgpu_code_objects(lib) == []


def test_missing_rocm_bitcode_names_the_package(tmp_path, monkeypatch, conv_model, invoke):
    monkeypatch.setattr(toolchain, "_find_lld", lambda: "ld.lld-19")  # whether or not it is installed
    monkeypatch.setenv("ROCM_PATH", str(tmp_path))  # a ROCm root without device libraries
    result = invoke("build", conv_model, "--target", "rocm-gfx942", "-o", tmp_path / "o.so")
    assert_one_line_error(result, "ocml.bc", "apt-get install rocm-device-libs")
    assert not (tmp_path / "o.so").exists()


def test_missing_new_lld_names_the_package(tmp_path, monkeypatch, conv_model, invoke):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "g++").symlink_to(shutil.which("g++"))  # a C++ compiler, but no ld.lld-19+
    monkeypatch.setenv("PATH", str(bin_dir))
    result = invoke("build", conv_model, "--target", "rocm-gfx90a", "-o", tmp_path / "o.so")
    assert_one_line_error(result, "ld.lld 19 or newer", "apt-get install lld-19")


def test_arm_artifact_refuses_to_load_on_x86(tmp_path, conv_model, invoke):
    lib = build.build(conv_model, targets.resolve("arm-cortex-a72"), tmp_path / "arm.so").path
    with pytest.raises(TvmoptError, match="built for llvm/aarch64/cortex-a72 .*this machine is x86_64"):
        runtime.load(lib)
    result = invoke("inspect", lib)
    assert result.exit_code == 0 and "aarch64 ELF" in result.output


@pytest.mark.skipif(targets.local_cuda_arch() is not None, reason="this machine has a GPU")
def test_cuda_artifact_refuses_to_load_without_a_gpu(tmp_path, conv_model):
    lib = build.build(conv_model, targets.resolve("cuda-sm80"), tmp_path / "cuda.so").path
    with pytest.raises(TvmoptError, match="built for cuda/sm_80 and needs an NVIDIA GPU"):
        runtime.load(lib)


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch, conv_model, invoke):
    (tmp_path / "arm-nocc.json").write_text(json.dumps({
        "description": "ARM with a compiler that is not installed", "family": "arm",
        "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"},
        "cc": "aarch64-linux-gnu-g++-0"}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    result = invoke("build", conv_model, "--target", "arm-nocc", "-o", tmp_path / "o.so")
    assert_one_line_error(result, "aarch64-linux-gnu-g++-0", "apt-get install g++-aarch64-linux-gnu")
    assert not (tmp_path / "o.so").exists()


def test_family_names_without_a_device_use_their_stated_default():
    if targets.local_cuda_arch() is None:
        assert targets.resolve("cuda").name == "cuda-sm80"
    if targets.local_rocm_arch() is None:
        assert targets.resolve("rocm").name == "rocm-gfx942"
    host_family = targets.resolve("host").family
    assert targets.resolve(host_family).name == "host"  # x86 on an x86 machine is this CPU
    other = {"x86": "arm", "arm": "x86"}[host_family]
    assert targets.resolve(other).name == {"x86": "x86-avx2", "arm": "arm-neoverse-n1"}[other]


@pytest.mark.parametrize("arch,expected", [
    ("sm_90", "cuda-sm90a"),  # an H100/H200 reports 9.0 and gets the sm_90a preset
    ("sm_75", "cuda-sm75"),
    ("sm_120", "cuda-sm_120"),  # newer than every preset: a target for the device itself
])
def test_cuda_family_picks_the_preset_for_the_gpu_found(monkeypatch, arch, expected):
    monkeypatch.setattr(targets, "local_cuda_arch", lambda: arch)
    preset = targets.resolve("cuda")
    assert preset.name == expected
    assert preset.target["arch"].startswith(arch)
    preset.tvm_target()


def test_rocm_family_reads_the_gpu_from_the_driver_topology(monkeypatch):
    monkeypatch.setattr(targets, "local_rocm_arch", lambda: "gfx90a")
    assert targets.resolve("rocm").name == "rocm-gfx90a"


def test_targets_lists_every_preset_with_a_description(invoke):
    result = invoke("targets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in targets.available():
        row = next(line for line in lines if line.split()[0] == name)
        assert len(row.split()) > 3  # family, target and a description follow the name
    rows = json.loads(invoke("targets", "--json").output)
    assert {r["name"] for r in rows} == set(targets.available())
    assert all(r["description"] for r in rows)


def test_targets_show_prints_one_preset(invoke):
    result = invoke("targets", "show", "arm-neoverse-v1")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["target"]["mcpu"] == "neoverse-v1" and shown["cc"] == "aarch64-linux-gnu-g++"
    assert shown["tvm_target"]["kind"] == "llvm"
    assert_one_line_error(invoke("targets", "show", "nonesuch"), "known presets:", "cuda-sm90a")

