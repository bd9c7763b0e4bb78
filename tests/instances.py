"""Compiling one kernel-library instance as a build would, without a GPU."""

from __future__ import annotations

import subprocess

from tvmopt.kernels.library import nvcc


def exports_its_symbol(spec, arch: str = "sm_90a") -> bool:
    """Whether nvcc compiles `spec` (an Instance; into TVMOPT_CACHE) to an object exporting the
    TVM FFI function the build calls."""
    (obj,) = nvcc.compile_all({spec.symbol: spec.source}, arch).values()
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    return f"__tvm_ffi_{spec.symbol}" in symbols
