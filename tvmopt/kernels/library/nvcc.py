"""Compiling kernel-library instances with nvcc, each once: a cache keyed by (source, nvcc
version, flags), filled in parallel with progress and an ETA.

The cache lives in $TVMOPT_CACHE (default $XDG_CACHE_HOME/tvmopt, else ~/.cache/tvmopt); objects
are written whole (temporary file, then rename), so concurrent builds can share it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ...errors import TvmoptError
from ...formatting import duration

log = logging.getLogger(__name__)

# One CUTLASS sm90 instance needs ~3.4 GB of memory in nvcc (measured on the 2-core VM).
_MEMORY_PER_JOB = 3.5e9


class Unavailable(TvmoptError):
    """The toolchain for the kernel library is missing; the build falls back to TVM kernels."""


@dataclass(frozen=True)
class Toolchain:
    nvcc: Path
    version: str  # the last line of `nvcc --version`
    includes: tuple[Path, ...]
    header_versions: tuple[str, ...]  # of CUTLASS and TVM FFI, whose headers the includes are
    cudart_dir: Path

    def flags(self, arch: str) -> list[str]:
        # Without NDEBUG, ptxas serialises wgmma instructions (warning C7510): a slow kernel.
        return ["-std=c++17", "-O3", "-DNDEBUG", f"-arch={arch}", "--expt-relaxed-constexpr",
                "-Xcompiler", "-fPIC", *(f"-I{p}" for p in self.includes)]

    def link_options(self) -> list[str]:
        return [f"-L{self.cudart_dir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]


def cache_dir() -> Path:
    root = os.environ.get("TVMOPT_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvmopt"
    return Path(root) / "kernels"


@cache
def toolchain() -> Toolchain:
    """nvcc, CUTLASS's headers (the `nvidia-cutlass` package) and TVM FFI's headers; Unavailable
    with what to install when one is missing."""
    nvcc = _find_nvcc()
    try:
        version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"{nvcc} --version failed ({e})") from None
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or spec.origin is None:
        raise Unavailable("CUTLASS headers not found; pip install 'tvmopt[cutlass]' "
                          "(the nvidia-cutlass package)")
    cutlass = Path(spec.origin).parent / "source"
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    includes = (cutlass / "include", cutlass / "tools" / "util" / "include", ffi / "include",
                ffi / "3rdparty" / "dlpack" / "include")
    root = nvcc.resolve().parent.parent
    cudart = [d for d in (root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib")
              if (d / "libcudart_static.a").is_file()]
    if not cudart:
        raise Unavailable(f"libcudart_static.a not found under {root}; install the CUDA toolkit's "
                          "runtime library (cuda-cudart-dev)")
    return Toolchain(nvcc, version, includes,
                     (_version("nvidia-cutlass", cutlass), _version("apache-tvm-ffi", ffi)),
                     cudart[0])


def _version(dist: str, where: Path) -> str:
    """A header package's version; its location where it was installed without metadata."""
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} at {where}"


def _find_nvcc() -> Path:
    found = shutil.which("nvcc")
    if found:
        # /usr/local/bin/nvcc is often a wrapper script; the toolkit is where the script points.
        text = Path(found).read_bytes()[:4096]
        if text.startswith(b"#!"):
            for word in text.decode(errors="replace").split():
                if word.endswith("/nvcc") and Path(word).is_file():
                    return Path(word)
        return Path(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    raise Unavailable("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda); install the CUDA "
                      "toolkit 12.3 or newer")


def compile_all(sources: dict[str, str], arch: str, jobs: int | None = None,
                failed: dict[str, str] | None = None) -> dict[str, Path]:
    """{name: C++ source} in, {name: cached object file} out; compiles only what the cache lacks.
    An instance nvcc rejects raises, or, given a `failed` dict, is left out and put there with
    nvcc's first error."""
    tools = toolchain()
    flags = tools.flags(arch)
    # Keyed by what the object depends on, not where the headers are installed: a cache filled
    # on one machine serves another with the same nvcc and header versions.
    versions = [tools.version, *tools.header_versions,
                *(f for f in flags if not f.startswith("-I"))]
    cache = cache_dir()
    objects = {}
    todo = {}
    for name, source in sources.items():
        key = hashlib.sha256("\0".join([source, *versions]).encode()).hexdigest()[:24]
        objects[name] = cache / f"{name}-{key}.o"
        if not objects[name].is_file():
            todo[name] = source
    if todo:
        errors = _compile(todo, {n: objects[n] for n in todo}, tools, flags, jobs or _jobs(),
                          cached=len(sources) - len(todo))
        if errors and failed is None:
            raise TvmoptError(next(iter(errors.values())))
        for name, error in errors.items():
            failed[name] = error
            del objects[name]
    return objects


def _jobs() -> int:
    import psutil

    by_memory = int(psutil.virtual_memory().available // _MEMORY_PER_JOB)
    return max(1, min(os.cpu_count() or 1, by_memory))


def _compile(sources: dict[str, str], objects: dict[str, Path], tools: Toolchain, flags,
             jobs: int, cached: int) -> dict[str, str]:
    """Compile each source into its object; {name: error} for those nvcc rejected."""
    errors = {}
    log.info("compiling %d CUTLASS kernel instance(s) with %s, %d at a time (%s)",
             len(sources), tools.nvcc, jobs, tools.version)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmopt-nvcc-") as tmp, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_nvcc, tools, flags, Path(tmp), name, source, objects[name]): name
                   for name, source in sources.items()}
        for done, future in enumerate(as_completed(futures), 1):
            try:
                future.result()
            except TvmoptError as e:
                errors[futures[future]] = str(e)
                log.warning("%s", e)
            elapsed = time.perf_counter() - start
            # Instances take about the same time; `jobs` of them run at once.
            rounds_left = -(-(len(sources) - done) // jobs)
            eta = elapsed / -(-done // jobs) * rounds_left
            log.info("CUTLASS kernels %d/%d compiled (%d cached)  elapsed %s  ETA %s",
                     done, len(sources), cached, duration(elapsed), duration(eta))
    return errors


def _nvcc(tools: Toolchain, flags, tmp: Path, name: str, source: str, obj: Path) -> None:
    src = tmp / f"{name}.cu"
    src.write_text(source)
    partial = tmp / f"{name}.o"
    proc = subprocess.run([str(tools.nvcc), *flags, "-c", str(src), "-o", str(partial)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        raise TvmoptError(f"nvcc failed on {name}: {(errors or proc.stderr.splitlines() or ['?'])[0]}")
    obj.parent.mkdir(parents=True, exist_ok=True)
    _move_whole(partial, obj)


def _move_whole(src: Path, dst: Path) -> None:
    """Copy into dst's directory under a temporary name, then rename: readers never see half."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix=".part")
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def link_shared(objects: list[Path], out: Path) -> Path:
    """A shared library of kernel instances on their own (what tactic measurement loads)."""
    # The static CUDA runtime comes after the objects that need it.
    cmd = ["g++", "-shared", "-fPIC", "-o", str(out), *map(str, objects),
           *toolchain().link_options()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TvmoptError(f"linking {len(objects)} CUTLASS instance(s) failed: "
                          f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return out
