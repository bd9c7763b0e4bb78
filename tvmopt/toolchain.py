"""The compilers and linkers a build needs besides TVM: the preset's C++ (cross) compiler, and for
ROCm the device bitcode and an ld.lld new enough for TVM's code objects.

Checked before any compiling starts, so a missing tool fails in a second with the package to
install, not after minutes of work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import TvmoptError
from .targets import Preset

# Where Debian's rocm-device-libs and AMD's own ROCm install put the device bitcode (ocml.bc, ...).
_ROCM_PATHS = ("/opt/rocm", "/usr/lib/x86_64-linux-gnu")
# TVM's LLVM emits code object v6, which needs ld.lld 19 or newer to link.
_MIN_LLD = 19


def linker(cc: str):
    """TVM's fcompile for the preset's C++ compiler; TvmoptError when it is not installed."""
    from tvm.support import cc as tvm_cc

    if shutil.which(cc) is None:
        raise TvmoptError(f"the C++ compiler {cc!r} for this target is not installed; "
                          f"install it (e.g. apt-get install {_package_for(cc)})")
    return tvm_cc.cross_compiler(cc)


def _package_for(cc: str) -> str:
    if cc.startswith("aarch64-linux-gnu-"):
        return "g++-aarch64-linux-gnu"
    return "g++"


@contextmanager
def toolchain(preset: Preset):
    """The preset's environment plus, for ROCm, the device bitcode and a new enough ld.lld."""
    with environment(preset.env):
        if preset.family != "rocm":
            yield
            return
        lld = _find_lld()
        with environment({"ROCM_PATH": _rocm_path()}), _linking_with(lld):
            yield


def _rocm_path() -> str:
    given = os.environ.get("ROCM_PATH")
    for root in ([given] if given else _ROCM_PATHS):
        if (Path(root) / "amdgcn" / "bitcode" / "ocml.bc").is_file():
            return root
    where = f"ROCM_PATH={given}" if given else " or ".join(_ROCM_PATHS)
    raise TvmoptError(f"ROCm device bitcode (amdgcn/bitcode/ocml.bc) not found in {where}; install "
                      "it with apt-get install rocm-device-libs (or set ROCM_PATH to a ROCm install)")


def _find_lld() -> str:
    for major in range(30, _MIN_LLD - 1, -1):
        found = shutil.which(f"ld.lld-{major}")
        if found:
            return found
    raise TvmoptError(f"ROCm builds need ld.lld {_MIN_LLD} or newer (TVM emits AMDGPU code object "
                      f"v6); install it with apt-get install lld-{_MIN_LLD}")


@contextmanager
def _linking_with(lld: str):
    """Make TVM link AMDGPU code objects with `lld` (its own lookup prefers an older ld.lld).

    In this process only: MetaSchedule's builder workers keep TVM's own lookup."""
    import tvm_ffi
    from tvm.support import rocm  # registers the bitcode-path callback that codegen calls

    def link(obj_bin):
        with tempfile.TemporaryDirectory(prefix="tvmopt-rocm-") as tmp:
            obj, code_object = Path(tmp) / "kernels.o", Path(tmp) / "kernels.co"
            obj.write_bytes(bytes(obj_bin))
            rocm.rocm_link(str(obj), str(code_object), lld=lld)
            return bytearray(code_object.read_bytes())

    previous = tvm_ffi.get_global_func("tvm_callback_rocm_link", allow_missing=True)
    tvm_ffi.register_global_func("tvm_callback_rocm_link", link, override=True)
    try:
        yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_rocm_link", previous, override=True)


@contextmanager
def environment(values: dict):
    """os.environ with `values` set, restored afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def gpu_pass_config(target) -> dict:
    """PassContext settings for compiling CUDA kernels, the same in tuning workers and the build.

    Tensor-core kernels with an fp32 accumulator and a fused fp16 epilogue fail in lower_intrin.cc
    ("tvm_access_ptr element type must match", apache/tvm #20079) once StorageRewrite has merged
    their buffers; with the rewrite off they build. (`tirx.merge_static_smem`, the other known
    workaround, breaks plain fp32 DLight convs: "buffer_byte_offsets" check failure.)
    """
    return {"tirx.disable_storage_rewrite": True} if target.kind.name == "cuda" else {}
