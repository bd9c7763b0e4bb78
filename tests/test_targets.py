import json
import platform

import pytest

from tvmopt import targets
from tvmopt.errors import TvmoptError


def test_host_is_detected_with_explicit_triple_and_cpu():
    preset = targets.resolve("host")
    assert preset.target["kind"] == "llvm"
    assert preset.target["mtriple"].startswith(platform.machine())
    assert preset.target["mcpu"] not in ("", "native", "generic")
    preset.tvm_target()  # TVM accepts it


def test_presets_are_data(tmp_path, monkeypatch):
    (tmp_path / "my-box.json").write_text(json.dumps({
        "description": "a team box", "family": "x86",
        "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    assert "my-box" in targets.available()
    preset = targets.resolve("my-box")
    assert preset.key == "llvm/x86_64/haswell" and preset.cc == "g++"


def test_every_shipped_preset_is_a_valid_tvm_target():
    for preset in targets.load_all():
        preset.tvm_target()
        assert preset.description


def test_target_json():
    preset = targets.resolve('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"}')
    assert preset.key == "llvm/x86_64/skylake-avx512"


@pytest.mark.parametrize("content,match", [
    ('{"description": "x", "family": "x86", "target": {"kind": "llvm"}, "colour": 1}', "colour"),
    ('{"description": "x", "family": "mips", "target": {"kind": "llvm"}}', "family"),
    ('{"description": "x", "family": "x86"}', "'target'"),
    ('{"description": "x", "family": "x86", "target": {"kind": "llvm", "mcpu": 7}}', "not a valid"),
    ("{not json", "unreadable JSON"),
    ('{"description": "x", "detect": "tpu", "default": "host"}', "'detect' must be one of"),
    ('{"description": "x", "detect": "cuda"}', "needs a 'default'"),
    ('{"description": "x", "detect": "cuda", "default": "rocm"}', "a concrete preset"),
])
def test_bad_preset_file(tmp_path, monkeypatch, content, match):
    (tmp_path / "broken.json").write_text(content)
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    with pytest.raises(TvmoptError, match=match):
        targets.resolve("broken").tvm_target()


def test_unknown_target_lists_presets():
    with pytest.raises(TvmoptError, match="known presets: .*host"):
        targets.resolve("nonesuch")
