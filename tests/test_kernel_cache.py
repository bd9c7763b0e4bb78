"""The kernel cache (tvmopt/kernels/library/: nvcc.py, kernel_cache.py, resources.py) as a machine
and a team share it: job slots for nvcc across processes sized by memory, one compile per
instance, a killed nvcc retried, entries verified against the digests in the cache's index,
caches others can write refused, team caches by opt-in, read-only caches served and bypassed.

nvcc is a shell wrapper that logs each compile (start and end) and then either runs the real
nvcc, writes a stand-in object (the source's bytes: the cache does not look inside objects), or
dies the way an OOM-killed nvcc does. No CUTLASS instance is compiled except in the slow test."""

import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import models
from conftest import assert_one_line_error, empty_database
from tvmopt import build, targets
from tvmopt.errors import TvmoptError
from tvmopt.kernels.library import kernel_cache, nvcc, resources
from tvmopt.prepare import ModelOptions

HOPPER = "cuda-sm90a"
FP16_NHWC = ModelOptions(precision="fp16", layout="NHWC")
TINY = {"f1": 'extern "C" int f1() { return 1; }', "f2": 'extern "C" int f2() { return 2; }',
        "f3": 'extern "C" int f3() { return 3; }', "f4": 'extern "C" int f4() { return 4; }'}
REPO = Path(__file__).resolve().parent.parent

# $MODE: real (the real nvcc), fake (a stand-in object), kill-once (SIGKILL the first time, then
# fake), kill (SIGKILL always), cicc-killed (how nvcc reports a killed cicc). $SLEEP: seconds a
# fake compile takes. No word of the script ends in "/nvcc" and names a file: _find_nvcc would
# otherwise look through it to the real one.
WRAPPER = r"""#!/bin/sh
LOG="{log}"
REAL_DIR="{real_dir}"
out=""; src=""; prev=""
for a in "$@"; do
  [ "$prev" = "-o" ] && out="$a"
  case "$a" in *.cu) src="$a";; esac
  prev="$a"
done
if [ -z "$src" ]; then exec "$REAL_DIR"/nvcc "$@"; fi  # --version
echo "start $$ $(date +%s.%N) $(basename "$src")" >> "$LOG"
mode="{mode}"
if [ "$mode" = kill-once ]; then
  mkdir "$LOG.killed" 2>/dev/null || mode=fake  # atomic: one compile is killed
fi
case "$mode" in
  kill|kill-once) echo "end $$ $(date +%s.%N) killed" >> "$LOG"; kill -9 $$ ;;
  cicc-killed) echo "end $$ $(date +%s.%N) killed" >> "$LOG"
               echo "nvcc error   : 'cicc' died due to signal 9 (Kill signal)" >&2; exit 255 ;;
  real) sleep {sleep}; "$REAL_DIR"/nvcc "$@"; rc=$? ;;
  *) sleep {sleep}; cat "$src" > "$out"; rc=0 ;;
esac
echo "end $$ $(date +%s.%N)" >> "$LOG"
exit $rc
"""


def make_nvcc(where: Path, mode: str = "fake", sleep: float = 0.2) -> Path:
    """A wrapper nvcc in where/bin (with where/lib64 the toolkit's, so it passes for a toolkit);
    its log is where/nvcc.log."""
    real = nvcc._find_nvcc().resolve()
    (where / "bin").mkdir(parents=True, exist_ok=True)
    lib = where / "lib64"
    if not lib.exists():
        lib.symlink_to(nvcc.cuda_toolchain().cudart_dir)
    script = where / "bin" / "nvcc"
    script.write_text(WRAPPER.format(log=where / "nvcc.log", real_dir=real.parent, mode=mode,
                                     sleep=sleep))
    script.chmod(0o755)
    return script


def compiles(wrapper: Path) -> list[tuple[str, float, float]]:
    """(source name, start, end) of each compile the wrapper ran."""
    log = wrapper.parent.parent / "nvcc.log"
    starts, spans = {}, []
    for line in (log.read_text().splitlines() if log.exists() else []):
        kind, pid, when, *rest = line.split()
        if kind == "start":
            starts[pid] = (rest[0], float(when))
        else:
            name, start = starts.pop(pid)
            spans.append((name, start, float(when)))
    assert not starts, f"compiles that never ended: {starts}"
    return spans


def most_at_once(spans) -> int:
    events = sorted([(s, 1) for _, s, _ in spans] + [(e, -1) for _, _, e in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TVMOPT_CACHE", str(root))
    monkeypatch.delenv(kernel_cache.SHARED_ENV, raising=False)
    return root


def use(monkeypatch, wrapper: Path, memory: float | None = None):
    """This process's compile_all runs `wrapper` as nvcc (and sees `memory` bytes usable)."""
    real = nvcc.cuda_toolchain()
    monkeypatch.setattr(nvcc, "cuda_toolchain", lambda: dataclasses.replace(real, nvcc=wrapper))
    if memory is not None:
        monkeypatch.setattr(resources, "_usable_memory", lambda: memory)


CHILD = textwrap.dedent("""
    import dataclasses, json, logging, sys
    from pathlib import Path
    from tvmopt.kernels.library import nvcc, resources
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = json.loads(sys.argv[1])
    real = nvcc.cuda_toolchain()
    nvcc.cuda_toolchain = lambda: dataclasses.replace(real, nvcc=Path(args["nvcc"]))
    if args["memory"]:
        resources._usable_memory = lambda: args["memory"]
    failed = {}
    objects = nvcc.compile_all(args["sources"], "sm_90a", failed=failed)
    print(json.dumps({"objects": {n: Path(p).read_bytes().hex() for n, p in objects.items()},
                      "failed": failed}))
""")


def child(cache_root: Path, wrapper: Path, sources: dict, memory: float | None = None,
          **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({"nvcc": str(wrapper), "sources": sources,
                                                  "memory": memory})],
        env={**os.environ, "TVMOPT_CACHE": str(cache_root), "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.splitlines()[-1]), err


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- one compile per instance, job slots ------------------------------------------------------


def test_two_processes_compile_an_instance_once(tmp_path, cache):
    """The second process waits for the first one's compile (the real nvcc) and uses its entry."""
    wrapper = make_nvcc(tmp_path / "cuda", mode="real", sleep=5)
    first = child(cache, wrapper, {"f1": TINY["f1"]})
    wait_for(lambda: compiles_started(wrapper) == 1)
    second = child(cache, wrapper, {"f1": TINY["f1"]})
    (a, _), (b, err) = finish(first), finish(second)
    assert len(compiles(wrapper)) == 1
    assert a["objects"] == b["objects"] and a["failed"] == b["failed"] == {}
    assert "waiting for another tvmopt process compiling f1" in err
    assert len(list((cache / "kernels").glob("f1-*.o"))) == 1


def compiles_started(wrapper: Path) -> int:
    log = wrapper.parent.parent / "nvcc.log"
    return log.read_text().count("start ") if log.exists() else 0


def test_processes_share_the_job_slots_memory_allows(tmp_path, cache):
    """Two processes, four instances each, memory for one nvcc: one compile at a time in all."""
    wrapper = make_nvcc(tmp_path / "cuda", sleep=1.0)
    one_job = 1.2 * resources._MEMORY_PER_JOB
    procs = [child(cache, wrapper, {f"{n}_{p}": src for n, src in TINY.items()}, one_job)
             for p in "ab"]
    for proc in procs:
        result, err = finish(proc)
        assert len(result["objects"]) == 4
    spans = compiles(wrapper)
    assert len(spans) == 8 and most_at_once(spans) == 1


def test_the_slot_count_follows_memory_and_cores(monkeypatch):
    monkeypatch.setattr(resources, "_cores", lambda: 16)
    for memory, slots in [(64e9, 16), (7.5e9, 2), (7.0e9, 2), (6.9e9, 1), (1e9, 1)]:
        monkeypatch.setattr(resources, "_usable_memory", lambda: memory)
        assert resources.slot_count() == slots
    monkeypatch.setattr(resources, "_cores", lambda: 2)
    assert resources.slot_count() == 1  # still 1e9
    monkeypatch.setattr(resources, "_usable_memory", lambda: 64e9)
    assert resources.slot_count() == 2


def test_usable_memory_is_the_tightest_cgroup_headroom(tmp_path, monkeypatch):
    """A container's memory limit (cgroup v1 or v2, at any level above the process) counts, minus
    what the cgroup uses; reclaimable page cache does not count as used."""
    v1 = tmp_path / "v1" / "docker" / "box"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{7 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{3 << 30}\n")
    (v1 / "memory.stat").write_text(f"cache 100\ntotal_inactive_file {1 << 30}\n")
    (v1.parent / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (v1.parent / "memory.usage_in_bytes").write_text(f"{20 << 30}\n")
    v2 = tmp_path / "v2" / "user.slice"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("max\n")
    (v2 / "memory.current").write_text("123\n")
    monkeypatch.setattr(resources, "_cgroup_dirs", lambda controller: [
        (1, [v1, v1.parent]), (2, [v2, v2.parent])])
    assert resources._cgroup_headroom() == [5 << 30]  # 7 GiB - (3 GiB - 1 GiB inactive cache)
    monkeypatch.setattr(resources, "_mem_available", lambda: 64e9)
    assert resources._usable_memory() == 5 << 30
    (v2 / "memory.max").write_text(f"{4 << 30}\n")
    assert resources._usable_memory() == (4 << 30) - 123
    monkeypatch.setattr(resources, "_cores", lambda: 16)
    assert resources.slot_count() == 1


def test_this_machines_cgroups_are_read():
    """Whatever the machine: a positive amount, never more than MemAvailable."""
    assert 0 < resources._usable_memory() <= resources._mem_available()
    assert resources._cores() >= 1


def test_a_killed_build_leaks_no_slot(tmp_path, cache, monkeypatch):
    """Slots and instance locks are flocks: a process killed while holding them frees them."""
    wrapper = make_nvcc(tmp_path / "cuda")
    use(monkeypatch, wrapper, memory=resources._MEMORY_PER_JOB)  # one slot
    assert nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")  # creates the cache's slots
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        for path in {[str(cache / "kernels" / ".slots" / "0")]!r}:
            fcntl.flock(os.open(path, os.O_RDONLY), fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    assert nvcc.compile_all({"f2": TINY["f2"]}, "sm_90a")
    assert time.monotonic() - start < 30


# --- killed nvcc, failed instances -------------------------------------------------------------


def test_a_killed_nvcc_is_retried_once_alone(tmp_path, cache, monkeypatch, caplog):
    """SIGKILL'd (the OOM killer) once: compiled again, alone, and no warning."""
    wrapper = make_nvcc(tmp_path / "cuda", mode="kill-once")
    use(monkeypatch, wrapper, memory=8 * resources._MEMORY_PER_JOB)
    failed = {}
    with caplog.at_level(logging.INFO):
        objects = nvcc.compile_all({"f1": TINY["f1"], "f2": TINY["f2"]}, "sm_90a", failed=failed)
    assert failed == {} and sorted(objects) == ["f1", "f2"]
    assert len(compiles(wrapper)) == 3  # f1 and f2, then the killed one again
    assert "compiling f1 again, one at a time" in caplog.text or \
           "compiling f2 again, one at a time" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode", ["kill", "cicc-killed"])
def test_an_instance_that_cannot_compile_ends_in_failed(tmp_path, cache, monkeypatch, mode):
    wrapper = make_nvcc(tmp_path / "cuda", mode=mode)
    use(monkeypatch, wrapper)
    failed = {}
    assert nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a", failed=failed) == {}
    assert list(failed) == ["f1"] and "nvcc failed on f1: killed" in failed["f1"]
    assert len(compiles(wrapper)) == 2  # tried, then once more alone
    with pytest.raises(TvmoptError, match="nvcc failed on f1: killed .*out of memory"):
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    assert not list((cache / "kernels").glob("*.o"))


def test_a_build_whose_instances_cannot_compile_runs_tvm_kernels(tmp_path, cache, monkeypatch,
                                                                 caplog):
    """nvcc killed every time (a build host out of memory): the build succeeds without the
    library, saying so in one warning line."""
    wrapper = make_nvcc(tmp_path / "cuda", mode="kill")
    use(monkeypatch, wrapper)
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    with caplog.at_level(logging.INFO):
        result = build.build(path, targets.resolve(HOPPER), tmp_path / "m.so",
                             options=FP16_NHWC)
    assert result.manifest["library_kernels"] == {}
    assert "cutlass" not in result.manifest["kernel_providers"].values()
    assert (tmp_path / "m.so").is_file()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                  and r.name.startswith("tvmopt")]
    assert "2 instance(s) could not be compiled, TVM kernels run their 2 layer(s)" in warning
    assert "killed" in warning and "\n" not in warning
    assert len(compiles(wrapper)) == 4


# --- verified entries ---------------------------------------------------------------------------


def test_entries_are_verified_and_what_is_linked_is_what_was_checked(tmp_path, cache,
                                                                     monkeypatch, caplog):
    wrapper = make_nvcc(tmp_path / "cuda")
    use(monkeypatch, wrapper)
    (obj,) = nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a").values()
    (entry,) = (cache / "kernels").glob("f1-*.o")
    index = json.loads((cache / "kernels" / "index.json").read_text())
    assert list(index["entries"]) == [entry.name]
    assert obj.read_bytes() == entry.read_bytes() == TINY["f1"].encode()
    assert not obj.is_relative_to(cache)  # a private copy of the checked bytes
    assert stat.S_IMODE(entry.stat().st_mode) == 0o644 & ~current_umask()  # not mkstemp's 0600

    # Tampered (bytes changed after the write, the index untouched): caught, compiled again.
    entry.write_bytes(b"\x7fELF planted constructor")
    with caplog.at_level(logging.WARNING):
        (obj,) = nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a").values()
    assert obj.read_bytes() == entry.read_bytes() == TINY["f1"].encode()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert entry.name in warning and "does not match the digest" in warning
    assert len(compiles(wrapper)) == 2

    # Planted with its index record removed (or before the instance was ever compiled here):
    # an entry without a record is never used.
    nvcc.compile_all({"f2": TINY["f2"]}, "sm_90a")
    (real2,) = (cache / "kernels").glob("f2-*.o")
    real2.write_bytes(b"planted")
    index_path = cache / "kernels" / "index.json"
    index = json.loads(index_path.read_text())
    del index["entries"][real2.name]
    index_path.write_text(json.dumps(index))
    (obj2,) = nvcc.compile_all({"f2": TINY["f2"]}, "sm_90a").values()
    assert obj2.read_bytes() == TINY["f2"].encode()
    assert len(compiles(wrapper)) == 4

    # A damaged index: one warning, everything compiled again, the index rewritten.
    index_path.write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    assert "index" in caplog.text and "damaged" in caplog.text
    assert json.loads(index_path.read_text())["entries"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- permissions ------------------------------------------------------------------------------


@pytest.mark.parametrize("what, mode, fix", [
    ("dir", 0o775, "chmod go-w"), ("dir", 0o777, "chmod o-w"), ("root", 0o770, "chmod go-w"),
    ("entry", 0o664, "chmod go-w"), ("entry", 0o646, "chmod o-w"), ("index", 0o664, "chmod go-w")])
def test_a_cache_others_can_write_is_refused(tmp_path, cache, monkeypatch, what, mode, fix):
    wrapper = make_nvcc(tmp_path / "cuda")
    use(monkeypatch, wrapper)
    nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    path = {"dir": cache / "kernels", "root": cache, "index": cache / "kernels" / "index.json",
            "entry": next((cache / "kernels").glob("f1-*.o"))}[what]
    path.chmod(mode)
    with pytest.raises(kernel_cache.CacheRefused) as refused:
        nvcc.compile_all({"f1": TINY["f1"], "f2": TINY["f2"]}, "sm_90a", failed={})
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and fix in message
    if fix == "chmod go-w":
        assert f"{kernel_cache.SHARED_ENV}=group" in message
    assert len(compiles(wrapper)) == 1  # refused before compiling anything


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_cache_of_another_user_is_refused(tmp_path, cache, monkeypatch):
    use(monkeypatch, make_nvcc(tmp_path / "cuda"))
    nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    (entry,) = (cache / "kernels").glob("f1-*.o")
    os.chown(entry, 4321, -1)
    with pytest.raises(kernel_cache.CacheRefused, match="belongs to another user .uid 4321"):
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    monkeypatch.setenv(kernel_cache.SHARED_ENV, "group")  # a teammate's entry, in a team cache
    assert nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")


def test_the_cli_refuses_in_one_line(tmp_path, cache, monkeypatch, invoke):
    use(monkeypatch, make_nvcc(tmp_path / "cuda"))
    (cache / "kernels").mkdir(parents=True)
    (cache / "kernels").chmod(0o777)
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    result = invoke("build", path, "--target", HOPPER, "--precision", "fp16", "--layout", "NHWC",
                    "-o", tmp_path / "m.so")
    assert_one_line_error(result, str(cache / "kernels"), "writable by every user", "chmod o-w")
    assert not (tmp_path / "m.so").exists()


def test_a_team_cache_by_opt_in(tmp_path, cache, monkeypatch):
    """TVMOPT_CACHE_SHARED=group: group-writable setgid directories, group-readable entries and
    index whatever the umask, and still never writable by everyone."""
    use(monkeypatch, make_nvcc(tmp_path / "cuda"))
    monkeypatch.setenv(kernel_cache.SHARED_ENV, "group")
    old = os.umask(0o077)
    try:
        assert nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    finally:
        os.umask(old)
    for d in (cache, cache / "kernels"):
        mode = d.stat().st_mode
        assert mode & stat.S_ISGID and mode & 0o070 == 0o070 and not mode & 0o007, oct(mode)
    for f in [*(cache / "kernels").glob("f1-*.o"), cache / "kernels" / "index.json"]:
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode & stat.S_IRGRP and not mode & 0o022, (f, oct(mode))
    (cache / "kernels").chmod(0o2775)  # a teammate's umask 002 made it so: fine in a team cache
    assert nvcc.compile_all({"f1": TINY["f1"], "f2": TINY["f2"]}, "sm_90a")
    (cache / "kernels").chmod(0o2777)
    with pytest.raises(kernel_cache.CacheRefused, match="writable by every user"):
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    monkeypatch.setenv(kernel_cache.SHARED_ENV, "yes")
    with pytest.raises(TvmoptError, match="TVMOPT_CACHE_SHARED=yes is not understood"):
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")


def test_a_private_cache_is_created_closed_whatever_the_umask(tmp_path, cache, monkeypatch):
    """A umask of 002 (user private groups) must not make a cache the next build refuses."""
    use(monkeypatch, make_nvcc(tmp_path / "cuda"))
    old = os.umask(0o002)
    try:
        nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    finally:
        os.umask(old)
    for d in (cache, cache / "kernels"):
        assert not d.stat().st_mode & 0o022
    assert nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")


# --- read-only caches ---------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """Makes a directory read-only: a read-only bind mount as root (root ignores modes), else
    chmod; undone at the end."""
    undo = []

    def make(d: Path):
        if os.geteuid() == 0:
            if subprocess.run(["mount", "--bind", str(d), str(d)]).returncode != 0:
                pytest.skip("cannot bind-mount here")
            undo.append(["umount", str(d)])
            subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True)
        else:
            for p in [d, *d.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
                    undo.append(["chmod", "755", str(p)])

    yield make
    for cmd in reversed(undo):
        subprocess.run(cmd, check=True)


def test_a_read_only_cache_serves_its_entries_and_compiles_the_rest_privately(
        tmp_path, cache, monkeypatch, caplog, read_only):
    wrapper = make_nvcc(tmp_path / "cuda")
    use(monkeypatch, wrapper)
    nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a")
    before = sorted(p.name for p in (cache / "kernels").iterdir())
    read_only(cache)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        objects = nvcc.compile_all({"f1": TINY["f1"], "f2": TINY["f2"]}, "sm_90a")
    assert {n: p.read_bytes() for n, p in objects.items()} == {
        "f1": TINY["f1"].encode(), "f2": TINY["f2"].encode()}
    assert [name for name, *_ in compiles(wrapper)] == ["f1.cu", "f2.cu"]  # f1 once, earlier
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "is read-only: compiling 1 instance(s) into a private temporary cache" in warning
    assert str(cache / "kernels") in warning
    # the warning came before nvcc ran
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index(warning) < next(i for i, m in enumerate(messages) if "compiling 1" in m
                                          and "kernel-library" in m)
    assert sorted(p.name for p in (cache / "kernels").iterdir()) == before
    # This process's next build finds f2 in its private cache.
    assert sorted(nvcc.compile_all({"f1": TINY["f1"], "f2": TINY["f2"]}, "sm_90a")) == ["f1", "f2"]
    assert len(compiles(wrapper)) == 2


def test_a_cache_that_cannot_be_created_is_read_only(tmp_path, monkeypatch, read_only):
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(parent)
    monkeypatch.setenv("TVMOPT_CACHE", str(parent / "cache"))
    monkeypatch.delenv(kernel_cache.SHARED_ENV, raising=False)
    use(monkeypatch, make_nvcc(tmp_path / "cuda"))
    (obj,) = nvcc.compile_all({"f1": TINY["f1"]}, "sm_90a").values()
    assert obj.read_bytes() == TINY["f1"].encode()


# --- the whole story, slowly ------------------------------------------------------------------

CGROUP = Path("/sys/fs/cgroup/memory")


@pytest.mark.slow
def test_concurrent_cold_builds_in_a_memory_limited_container(tmp_path):
    """4 cold `cuda-sm90a` fp16 builds of different small models sharing one cache inside a 7 GiB
    memory cgroup on a 2-core machine: all succeed with the kernel library, each instance is
    compiled once, and never more nvcc run at once than the memory allows."""
    group = CGROUP / f"tvmopt-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(7 << 30))
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup (v1) here: {e}")
    wrapper = make_nvcc(tmp_path / "cuda", mode="real")
    cache_root = tmp_path / "cache"
    env = {**os.environ, "TVMOPT_CACHE": str(cache_root), "PYTHONPATH": str(REPO),
           "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    env.pop(kernel_cache.SHARED_ENV, None)
    env.pop("TVMOPT_DB", None)
    tvmopt = [sys.executable, "-c", "from tvmopt.cli import main; main()"]
    enter = f"echo $$ > {group / 'cgroup.procs'} && exec \"$@\""
    procs = []
    try:
        for i, (hidden, channels, size) in enumerate([(64, 16, 8), (32, 8, 8), (64, 8, 16),
                                                      (128, 16, 4)]):
            model = models.library_layers(tmp_path / f"m{i}.onnx", epilogues="relu",
                                          hidden=hidden, channels=channels, size=size)
            procs.append(subprocess.Popen(
                ["sh", "-c", enter, "sh", *tvmopt, "build", str(model), "--target", HOPPER,
                 "--precision", "fp16", "--layout", "NHWC", "-o", str(tmp_path / f"m{i}.so"),
                 "--db", str(empty_database(tmp_path / f"db{i}.sqlite"))],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate(timeout=3600)[0] for p in procs]
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.2)
    report = "\n".join(f"--- build {i} (rc {p.returncode})\n{out}"
                       for i, (p, out) in enumerate(zip(procs, outputs)))
    print(report)
    print(f"cgroup peak memory {peak / 2**30:.2f} GiB, failcnt {failcnt}")
    assert all(p.returncode == 0 for p in procs), report
    assert "could not be compiled" not in report and "Killed" not in report
    spans = compiles(wrapper)
    names = [name for name, *_ in spans]
    assert len(names) == len(set(names)) >= 2, names  # each instance compiled once
    slots = {int(s) for s in __import__("re").findall(r"(\d+) job slot\(s\)", report)}
    assert most_at_once(spans) <= max(slots) <= 2, (spans, slots)
    for i in range(4):
        shown = subprocess.run([*tvmopt, "inspect", str(tmp_path / f"m{i}.so")], env=env,
                               capture_output=True, text=True)
        assert shown.returncode == 0 and "cutlass" in shown.stdout, shown.stdout + shown.stderr
