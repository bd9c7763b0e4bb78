"""CI sees what a fresh machine sees: `.ci/run` installs into a virtual environment it made
for this run, from the pinned test environment, never into the system's site-packages."""

import importlib.metadata
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _under_ci() -> bool:
    return bool(os.environ.get("CI"))


@pytest.mark.skipif(not _under_ci(), reason="checks the environment `.ci/run` made (CI=true)")
def test_ci_runs_in_the_new_virtual_environment_it_made():
    venv = os.environ.get("TVMOPT_CI_VENV")
    assert venv, ".ci/run did not make a virtual environment for this run"
    assert sys.prefix != sys.base_prefix, "the tests run in the system's Python"
    assert Path(sys.prefix).resolve() == Path(venv).resolve()
    import onnxruntime
    import tvm

    for module in (tvm, onnxruntime):  # the packages come from that environment, not the system
        assert Path(module.__file__).resolve().is_relative_to(Path(venv).resolve()), module


@pytest.mark.skipif(not _under_ci(), reason="checks the environment `.ci/run` made (CI=true)")
def test_ci_installed_exactly_the_pinned_versions():
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                 for d in importlib.metadata.distributions()}
    installed.pop("tvmopt", None)
    unpinned = sorted(set(installed) - set(pins) - {"pip", "setuptools", "wheel"})
    assert not unpinned, f"installed but not in .ci/constraints.txt: {unpinned}"
    drifted = {n: (v, pins[n]) for n, v in installed.items() if n in pins and v != pins[n]}
    assert not drifted, drifted


def test_ci_script_makes_a_new_environment_and_pins_it():
    """`.ci/run` itself: a fresh venv every run, the constraints file, the leftover-process check."""
    script = (REPO / ".ci" / "run").read_text()
    assert 'rm -rf "$venv"' in script and "python3 -m venv" in script
    assert "-c .ci/constraints.txt" in script and "TVMOPT_CI_RUN" in script
