"""Compiling kernel-library instances with nvcc, each once: the toolchain (nvcc, CUTLASS's and
TVM FFI's headers, the library's own `csrc/`), compile_all, which fills the kernel cache (kernel_cache.py) in parallel with
progress and an ETA, and link_shared. Entries are keyed by (source, the `csrc/` headers it
includes, nvcc and header package versions, flags); every tvmopt process of a machine (or a team)
shares them safely:

- Job slots: all tvmopt processes using one cache share N job slots, `.slots/0..N-1`, each an
  flock'd file (released by the kernel when a process dies: a killed build never leaks one).
  Each process computes N itself (resources.py: by cores and usable memory) and takes only slots
  below it.
- One compile per instance: a process holds `.locks/<entry>.lock` while compiling an instance;
  another process wanting it compiles other instances first, then waits and uses the entry.
- An instance whose nvcc is killed (the OOM killer) is compiled again once, alone; one that
  still fails goes to `failed` (the build then runs its layers with TVM kernels).
- A read-only cache serves what it holds; the rest is compiled into a private temporary cache
  for this process, with a warning, before any nvcc runs.
- A failed compile keeps its source and nvcc's whole log in the cache's `failed/` folder, and the
  error names them. nvcc runs with a timeout (TVMOPT_NVCC_TIMEOUT seconds).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ...errors import TvmoptError
from ...formatting import byte_size, duration
from . import resources
from .instance import CSRC, included_sources
from .kernel_cache import (_UNRECORDED, _Cache, _open_cache, _private, _private_cache,
                           _read_entry, _read_index, _record, _stage, _try_lock, _write_whole)

log = logging.getLogger(__name__)

_POLL_SEC = 0.25  # how often a waiting process looks for a free slot or a finished instance
TIMEOUT_ENV = "TVMOPT_NVCC_TIMEOUT"
# An sm90 CUTLASS instance takes ~76 s on 16 cores and ~10 minutes on 2 busy ones.
_DEFAULT_TIMEOUT_SEC = 3600


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
        # The cubin alone: `-arch=sm_90a` also compiles compute_90 PTX (11% of a CUTLASS
        # instance's compile), in which the sm_90a-only kernels are empty bodies that a driver
        # would JIT for another GPU; without it such a GPU says "no kernel image" instead.
        virtual = arch.replace("sm_", "compute_")
        return ["-std=c++17", "-O3", "-DNDEBUG", f"-gencode=arch={virtual},code={arch}",
                "--expt-relaxed-constexpr",
                "-Xcompiler", "-fPIC", *(f"-I{p}" for p in (CSRC, *self.includes))]

    def link_options(self) -> list[str]:
        return [f"-L{self.cudart_dir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]


@cache
def cuda_toolchain() -> Toolchain:
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
    # examples/88_hopper_fmha: CUTLASS's Hopper FMHA (csrc/fmha_sm90.cuh), shipped as an example.
    includes = (cutlass / "include", cutlass / "tools" / "util" / "include",
                cutlass / "examples" / "88_hopper_fmha", ffi / "include",
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
    """{name: C++ source} in, {name: verified object file} out; compiles only what the cache
    lacks (or holds damaged). An instance nvcc rejects (or that is killed twice) raises, or,
    given a `failed` dict, is left out and put there with nvcc's first error. A cache other
    users could write raises a one-line TvmoptError before anything is compiled. `jobs` caps how
    many nvcc this process runs at once (the machine-wide slots cap it too)."""
    tools = cuda_toolchain()
    _timeout()  # a bad setting fails now, not in every worker
    flags = tools.flags(arch)
    # Keyed by what the object depends on, not where the headers are installed: a cache filled
    # on one machine serves another with the same nvcc and header versions.
    versions = [tools.version, *tools.header_versions,
                *(f for f in flags if not f.startswith("-I"))]
    shared = _open_cache()
    index = _read_index(shared, quiet=False)
    entries, objects, todo, unrecorded, stale = {}, {}, {}, 0, 0
    for name, source in sources.items():
        headers = [part for pair in included_sources(source) for part in pair]
        key = hashlib.sha256("\0".join([source, *headers, *versions]).encode()).hexdigest()[:24]
        entries[name] = f"{name}-{key}.o"
        data, problem = _read_entry(shared, entries[name], index)
        if data is not None:
            objects[name] = _stage(entries[name], data)
            continue
        todo[name] = source
        if problem is None and any(e.startswith(f"{name}-") for e in index):
            stale += 1
        if problem == _UNRECORDED:
            unrecorded += 1
        elif problem and not shared.writable:  # a writable cache says so when it recompiles
            log.warning("kernel cache entry %s %s; compiling it again", shared.dir / entries[name],
                        problem)
    if stale:
        log.info("%d instance(s) in %s were compiled from other sources or by another toolchain "
                 "(tvmopt's kernel sources, nvcc or CUTLASS changed): compiling them again",
                 stale, shared.dir)
    if unrecorded:
        log.info("%d cached instance(s) in %s have no digest in the cache's index (written by an "
                 "older tvmopt?): compiling them again", unrecorded, shared.dir)
    if todo and not shared.writable and "cache" in _private:  # compiled by this process before
        private = _private_cache()
        private_index = _read_index(private, quiet=True)
        for name in list(todo):
            data, _ = _read_entry(private, entries[name], private_index)
            if data is not None:
                objects[name] = _stage(entries[name], data)
                del todo[name]
    if todo:
        into = shared
        if not shared.writable:
            into = _private_cache()
            log.warning("kernel cache %s is read-only: compiling %d instance(s) into a private "
                        "temporary cache (%s) for this process", shared.dir, len(todo), into.dir)
        run = _Compile(into, tools, flags, {n: entries[n] for n in todo})
        errors = run.all(todo, jobs, cached=len(sources) - len(todo))
        objects.update(run.objects)
        if errors and failed is None:
            raise TvmoptError(next(iter(errors.values())))
        for name, error in errors.items():
            failed[name] = error
    return {name: objects[name] for name in sources if name in objects}


# ----------------------------------------------------------------------------------------------
# Compiling


class _Stopped(Exception):
    """Another worker failed: this one gives its slot wait up."""


@dataclass
class _Outcome:
    kind: str  # "compiled", "cached" (another process did), "failed", "killed"
    error: str | None = None


class _Compile:
    """One compile_all's instances to compile into a writable cache, by worker threads that
    each take an instance nobody compiles (its lock), then a machine-wide slot, then run nvcc."""

    def __init__(self, into: _Cache, tools: Toolchain, flags: list[str], entries: dict[str, str]):
        self.cache, self.tools, self.flags, self.entries = into, tools, flags, entries
        self.objects: dict[str, Path] = {}
        self.mutex = threading.Lock()
        self.slots = 1
        self.announced: set[str] = set()
        self.stop = False  # set when a worker fails: the others take nothing more
        self.error: BaseException | None = None

    def all(self, sources: dict[str, str], jobs: int | None, cached: int) -> dict[str, str]:
        """{name: error} for those that could not be compiled."""
        self.slots = resources.slot_count()
        threads = max(1, min(jobs or self.slots, self.slots))
        memory = resources._usable_memory()
        log.info("compiling %d kernel-library instance(s) with %s, %d at a time (%s; %d job "
                 "slot(s) for %s of usable memory, shared by the tvmopt processes of this cache)",
                 len(sources), self.tools.nvcc, min(threads, len(sources)), self.tools.version,
                 self.slots, byte_size(int(memory)))
        with tempfile.TemporaryDirectory(prefix="tvmopt-nvcc-") as tmp:
            self.tmp = Path(tmp)
            outcomes = self._pass(sources, threads, cached)
            killed = {n: s for n, s in sources.items() if outcomes[n].kind == "killed"}
            if killed:
                log.info("nvcc was killed compiling %d instance(s) (out of memory?): compiling "
                         "%s again, one at a time", len(killed), ", ".join(killed))
                outcomes.update(self._pass(killed, 1, cached))
        return {n: o.error for n, o in outcomes.items() if o.kind in ("failed", "killed")}

    def _pass(self, sources: dict[str, str], threads: int, cached: int) -> dict[str, _Outcome]:
        pending = list(sources)
        outcomes: dict[str, _Outcome] = {}
        start = time.perf_counter()
        found = 0  # entries another process compiled meanwhile

        def worker():
            nonlocal found
            try:
                while (taken := self._take(pending)) is not None:
                    name, lock = taken
                    try:
                        outcome = self._one(name, sources[name])
                    finally:
                        os.close(lock)
                    with self.mutex:
                        outcomes[name] = outcome
                        done = len(outcomes)
                        found += outcome.kind == "cached"
                        if outcome.kind in ("failed", "killed"):
                            log.info("%s", outcome.error)
                        elapsed = time.perf_counter() - start
                        # Instances take about the same time; `threads` of them run at once.
                        rounds_left = -(-(len(sources) - done) // threads)
                        eta = elapsed / -(-done // threads) * rounds_left
                        log.info("kernel-library instances %d/%d compiled (%d cached)  elapsed %s  ETA %s",
                                 done, len(sources), cached + found, duration(elapsed),
                                 duration(eta))
            except _Stopped:
                pass
            except BaseException as e:  # a CacheRefused (or a bug): the other workers stop too
                with self.mutex:
                    self.stop = True
                    self.error = self.error or e

        with ThreadPoolExecutor(max_workers=threads) as pool:
            futures = [pool.submit(worker) for _ in range(min(threads, len(sources)))]
            try:
                for future in futures:
                    future.result()
            except BaseException:  # Ctrl-C: no worker starts another nvcc
                self.stop = True
                raise
        if self.error is not None:
            raise self.error
        return outcomes

    def _take(self, pending: list[str]) -> tuple[str, int] | None:
        """(an instance no process is compiling, the fd of its lock), waiting while every one
        left is being compiled elsewhere; None when none is left."""
        while True:
            with self.mutex:
                if self.stop or not pending:
                    return None
                for name in pending:
                    lock = _try_lock(self.cache.lock(self.entries[name]), self.cache.group)
                    if lock is not None:
                        pending.remove(name)
                        return name, lock
                for name in pending:
                    if name not in self.announced:
                        self.announced.add(name)
                        log.info("waiting for another tvmopt process compiling %s", name)
            time.sleep(_POLL_SEC)

    def _slot(self) -> int:
        """The fd of a free machine-wide job slot below this process's slot count."""
        waited = False
        while not self.stop:
            for i in range(self.slots):
                fd = _try_lock(self.cache.slot(i), self.cache.group)
                if fd is not None:
                    return fd
            with self.mutex:
                if not waited and "slots" not in self.announced:
                    self.announced.add("slots")
                    log.info("all %d nvcc job slot(s) of %s are taken by other tvmopt processes;"
                             " waiting", self.slots, self.cache.dir)
            waited = True
            time.sleep(_POLL_SEC)
        raise _Stopped

    def _one(self, name: str, source: str) -> _Outcome:
        """Under the instance's lock: the entry if another process wrote it meanwhile, else
        compile it and write it into the cache."""
        entry = self.entries[name]
        data, problem = _read_entry(self.cache, entry, _read_index(self.cache, quiet=True))
        if data is not None:
            self.objects[name] = _stage(entry, data)
            return _Outcome("cached")
        if problem and problem != _UNRECORDED:  # compile_all said how many were unrecorded
            log.warning("kernel cache entry %s %s; compiling it again", self.cache.dir / entry,
                        problem)
        slot = self._slot()
        try:
            result = _nvcc(self.tools, self.flags, self.tmp, name, source,
                           self.cache.dir / "failed")
        finally:
            os.close(slot)
        if isinstance(result, _Outcome):
            return result
        data = result.read_bytes()
        try:
            _write_whole(self.cache.dir / entry, data, self.cache.group)
            _record(self.cache, entry, hashlib.sha256(data).hexdigest())
        except OSError as e:
            return _Outcome("failed", f"could not write {name} into the kernel cache "
                                      f"{self.cache.dir}: {e.strerror}")
        self.objects[name] = _stage(entry, data)
        return _Outcome("compiled")


# How a killed nvcc (or its cicc/ptxas) reports: a signal, a shell's 128+9, or its own words.
_KILLED = re.compile(r"\bKilled\b|signal 9\b|Kill signal|(?i:out of memory)|std::bad_alloc")


def _nvcc(tools: Toolchain, flags, tmp: Path, name: str, source: str,
          failures: Path) -> Path | _Outcome:
    """The object nvcc wrote (in tmp), or the outcome that says why there is none; a failure
    keeps the source and nvcc's whole log under `failures`."""
    src = tmp / f"{name}.cu"
    src.write_text(source)
    partial = tmp / f"{name}.o"
    with suppress(OSError):
        partial.unlink()
    timeout = _timeout()
    # Its own session, so a timeout kills cicc and ptxas too.
    proc = subprocess.Popen([str(tools.nvcc), *flags, "-c", str(src), "-o", str(partial)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log_text, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log_text, _ = proc.communicate()
        kept = _keep_failure(failures, name, source, log_text)
        return _Outcome("failed", f"nvcc took longer than {timeout:g} s on {name} ({TIMEOUT_ENV}"
                                  f" sets the limit){kept}")
    except BaseException:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode == 0 and partial.is_file():
        return partial
    lines = log_text.splitlines()
    if proc.returncode < 0 or proc.returncode == 128 + 9 or _KILLED.search(log_text):
        signal_name = (f"signal {-proc.returncode}" if proc.returncode < 0 else
                       next((line.strip() for line in lines if _KILLED.search(line)), "killed"))
        return _Outcome("killed", f"nvcc failed on {name}: killed ({signal_name}), out of memory?")
    errors = [line for line in lines if "error" in line]
    kept = _keep_failure(failures, name, source, log_text)
    return _Outcome("failed", f"nvcc failed on {name}: {(errors or lines or ['?'])[0]}{kept}")


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return _DEFAULT_TIMEOUT_SEC
    try:
        value = float(text)
        if value > 0:
            return value
    except ValueError:
        pass
    raise TvmoptError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0")


def _keep_failure(failures: Path, name: str, source: str, log_text: str) -> str:
    """Write the source and the log where the user can read them; the clause naming them."""
    try:
        failures.mkdir(mode=0o700, exist_ok=True)
        _write_whole(failures / f"{name}.cu", source.encode(), group=False)
        _write_whole(failures / f"{name}.log", log_text.encode(), group=False)
    except OSError as e:
        log.debug("could not keep the failed source of %s in %s: %s", name, failures, e)
        return ""
    return f" (source and nvcc's log: {failures / name}.cu, .log)"


def link_shared(objects: list[Path], out: Path) -> Path:
    """A shared library of kernel instances on their own (what tactic measurement loads)."""
    # The static CUDA runtime comes after the objects that need it.
    cmd = ["g++", "-shared", "-fPIC", "-o", str(out), *map(str, objects),
           *cuda_toolchain().link_options()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise TvmoptError(f"linking {len(objects)} CUTLASS instance(s) failed: "
                          f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return out
