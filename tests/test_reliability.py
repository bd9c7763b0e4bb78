"""Faults and attacks from the reliability probe of 2026-12-07 (../shared/reliability-cases-
2026-12-07.md; each test names its case ids): outputs nobody can redirect or share by accident,
pins checked on the bytes loaded, presets only from files you own, stop signals in every phase,
no process outliving tvmopt, no TVM log lines on the terminal, and a one-line message for every
environment failure."""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
from conftest import assert_one_line_error, empty_database

from tvmopt import build, manifest, runtime, targets

TVMOPT = [sys.executable, "-m", "tvmopt"]


def _matmul(path: Path, *, external: str | None = None, n: int = 16) -> Path:
    """y = relu(x @ W): its weights external (at location `external`, as written) if given."""
    w = numpy_helper.from_array(np.random.default_rng(0).random((n, n), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(exist_ok=True)
    if external is None:
        onnx.save(model, str(path))
        return path
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    if external != "weights.bin":  # point the location elsewhere, as a crafted file would
        _relocate(path, external)
    return path


def _relocate(path: Path, location: str) -> None:
    """Point the model's external tensor at `location`, as written (onnx.save would check it)."""
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A small host library and inputs for it, built once."""
    d = tmp_path_factory.mktemp("lib")
    model = _matmul(d / "mm.onnx")
    lib = build.build(model, targets.resolve("host"), d / "mm.so",
                      db_path=empty_database(d / "e.db")).path
    np.savez(d / "in.npz", x=np.ones((4, 16), np.float32))
    return lib, d / "in.npz"


@contextlib.contextmanager
def _small_disk(path: Path, size: str, *, readonly: bool = False):
    """A tmpfs of `size` at `path` (root only: CI runs as root)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if readonly else "")
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(path)], capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _shared_library(path: Path, source: str) -> Path:
    src = path.with_suffix(".cc")
    src.write_text(source)
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    return path


def _evil_library(path: Path, of_manifest, marker: Path) -> Path:
    """A library carrying `of_manifest` (sealed like a real one) whose constructor writes
    `marker`: what an attacker swaps in."""
    ctor = ('#include <cstdio>\n__attribute__((constructor)) static void pwn() {'
            f' FILE* f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }} }}\n')
    _shared_library(path, manifest.source(of_manifest) + ctor)
    if isinstance(of_manifest, dict):
        manifest.seal(path)
    return path


# SECURITY


def test_sha256_pin_holds_for_the_bytes_that_are_loaded(library, tmp_path, monkeypatch):
    """S13: the file is swapped for one that runs code after the pin was checked; what is loaded
    is still the pinned file's bytes."""
    import tvm

    lib, inputs = library
    target = shutil.copy(lib, tmp_path / "model.so")
    pin = hashlib.sha256(Path(target).read_bytes()).hexdigest()
    marker = tmp_path / "PWNED"
    evil = _evil_library(tmp_path / "evil.so", manifest.read(lib), marker)
    real_load = tvm.runtime.load_module

    def swap_then_load(path, *args):
        os.replace(evil, target)  # the attacker wins the race: the path now holds their file
        return real_load(path, *args)

    monkeypatch.setattr(tvm.runtime, "load_module", swap_then_load)
    model = runtime.load(target, sha256=pin)
    assert not marker.exists()
    y = model(x=np.ones((4, 16), np.float32))["y"]
    assert y.shape == (4, 16) and np.all(y > 0)


def test_run_output_is_never_written_through_a_planted_link(library, tmp_path, invoke):
    """L02: links planted under the temporary names an output could use."""
    lib, inputs = library
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (".out.npz.partial", ".out.npz.tmp", "out.npz.partial"):
        (tmp_path / name).symlink_to(victim)
    result = invoke("run", lib, "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    out = tmp_path / "out.npz"
    assert not out.is_symlink() and np.load(out)["y"].shape == (4, 16)
    assert_one_line_error(invoke("run", lib, "--inputs", inputs, "-o", tmp_path / ".out.npz.tmp"),
                          "symbolic link")


def test_presets_anyone_else_can_write_are_refused(tmp_path, monkeypatch):
    """TP01: a preset is code (its `cc` runs); only files and directories that no other user can
    write are read."""
    team = tmp_path / "team"
    team.mkdir()
    preset = team / "box.json"
    preset.write_text(json.dumps({"description": "a team box", "family": "x86", "cc": "g++",
                                  "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                             "mcpu": "haswell"}}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(team))
    team.chmod(0o755)
    preset.chmod(0o644)
    assert targets.resolve("box").cc == "g++"
    for where, mode in ((team, 0o1777), (preset, 0o666), (preset, 0o664)):
        where.chmod(mode)
        with pytest.raises(targets.TvmoptError, match="writable by other users.*chmod go-w"):
            targets.resolve("box")
        where.chmod(0o755 if where == team else 0o644)
    if os.geteuid() == 0:  # as root the test can hand the file to another user
        os.chown(preset, 65534, 65534)
        with pytest.raises(targets.TvmoptError, match="owned by another user"):
            targets.resolve("box")
        with pytest.raises(targets.TvmoptError, match="owned by another user"):
            targets.resolve(str(preset))


def test_a_family_name_resolves_to_built_in_presets_only(tmp_path, monkeypatch):
    """TP02: a preset for this machine's GPU in TVMOPT_TARGETS_PATH, sorting before the built-in
    one, is not what `--target cuda` picks; it is used when named."""
    (tmp_path / "a-h100.json").write_text(json.dumps({
        "description": "H100 (team)", "family": "cuda", "cc": "g++",
        "target": {"kind": "cuda", "arch": "sm_90a",
                   "host": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}}}))
    (tmp_path / "cuda.json").write_text(json.dumps({
        "description": "shadows the family", "family": "cuda", "cc": "g++",
        "target": {"kind": "cuda", "arch": "sm_80"}}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    monkeypatch.setattr(targets, "local_cuda_arch", lambda: "sm_90")
    chosen = targets.resolve("cuda")
    assert chosen.name == "cuda-sm90a" and Path(chosen.source).parent != tmp_path
    assert Path(targets.resolve("a-h100").source).parent == tmp_path


# DATA LOSS


def test_two_builds_to_one_output_each_leave_a_whole_library(tmp_path):
    """W01, W02: two builds of different models to one -o, at once: both succeed and the file
    is one whole library (the last to finish), never a mix."""
    a, b = _matmul(tmp_path / "a.onnx", n=16), _matmul(tmp_path / "b.onnx", n=32)
    db = empty_database(tmp_path / "e.db")
    out = tmp_path / "same.so"
    for _ in range(3):
        procs = [subprocess.Popen([*TVMOPT, "build", str(m), "--target", "host", "-o", str(out),
                                   "--db", str(db)], stderr=subprocess.PIPE, text=True)
                 for m in (a, b)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        assert manifest.integrity(out) == "intact"
        assert manifest.read(out)["model"] in ("a.onnx", "b.onnx")
        assert [p.name for p in tmp_path.iterdir() if "same.so" in p.name] == ["same.so"]


def test_outputs_on_a_full_disk_fail_with_one_line_and_keep_the_old_file(library, tmp_path,
                                                                         invoke):
    """DF01-DF03: the linker's and numpy's ENOSPC are named; the previous output survives."""
    lib, inputs = library
    with _small_disk(tmp_path / "small", "12k") as small:
        shutil.copy(inputs, small / "out.npz")
        before = (small / "out.npz").read_bytes()
        big = tmp_path / "big.npz"
        np.savez(big, x=np.ones((4, 16), np.float32))
        model = _matmul(tmp_path / "mm.onnx")
        assert_one_line_error(invoke("build", model, "--target", "host", "-o", small / "m.so"),
                              "No space left on device")
        filler = small / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(b"\0" * (1 << 20))
        assert_one_line_error(invoke("run", lib, "--inputs", big, "-o", small / "out.npz"),
                              "no space left on device")
        assert (small / "out.npz").read_bytes() == before
        assert sorted(p.name for p in small.iterdir()) == ["filler", "out.npz"]


def test_db_export_into_a_read_only_filesystem_is_one_line(tmp_path, invoke, isolated_db):
    """ROFS7."""
    with _small_disk(tmp_path / "ro", "1m", readonly=True) as ro:
        assert_one_line_error(invoke("db", "export", "--db", isolated_db, "-o", ro / "exp"),
                              "read-only file system")


# HANG


def test_pipes_and_devices_as_inputs_are_refused_at_once(library, tmp_path, invoke):
    """RB06 (a FIFO of inputs blocked forever), RB05, X08, X09."""
    lib, _ = library
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    start = time.monotonic()
    assert_one_line_error(invoke("run", lib, "--inputs", fifo), "a pipe, not a file")
    assert_one_line_error(invoke("run", lib, "--input", "x=/dev/zero"), "a device")
    fake = tmp_path / "f.so"
    os.mkfifo(fake)
    assert_one_line_error(invoke("run", fake, "--inputs", fifo), "a pipe, not a library")
    assert_one_line_error(invoke("inspect", fake), "a pipe, not a library")
    assert time.monotonic() - start < 60  # none of them waited on the pipe


# Signals and processes


def _wait_for_line(proc, prefix: str) -> list[str]:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r}: {''.join(seen)}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("phase", ["[1/3] import", "[2/3] compile", "[3/3] link"])
def test_a_stop_signal_in_any_build_phase_exits_at_once(tmp_path, phase, signum):
    """G01, G02: 130 or 143 and one line in every phase, the previous library kept, nothing
    left behind. The link is held open by a compiler wrapper that says when it started, so a
    signal meant for an earlier phase that lands later still finds the build running."""
    preset = tmp_path / "presets" / "slowlink.json"
    preset.parent.mkdir(mode=0o755)
    started = tmp_path / "linking"
    cc = tmp_path / "presets" / "slow-g++"
    cc.write_text(f"#!/bin/sh\ntouch {started}\nsleep 60\nexec g++ \"$@\"\n")
    cc.chmod(0o755)
    preset.write_text(json.dumps({"description": "links slowly", "family": "x86", "cc": str(cc),
                                  "target": targets.detect_host_target()}))
    out = tmp_path / "out" / "m.so"
    out.parent.mkdir()
    previous = tmp_path / "previous.so"
    _evil_library(previous, [], tmp_path / "unused")  # any bytes: they must survive
    shutil.copy(previous, out)
    model = models.conv_bn_relu(tmp_path / "m.onnx")
    proc = subprocess.Popen([*TVMOPT, "build", str(model), "--target", str(preset), "-o",
                             str(out), "--db", str(empty_database(tmp_path / "e.db"))],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_line(proc, phase)
    if phase.endswith("link"):
        while not started.exists() and proc.poll() is None:
            time.sleep(0.05)
    os.kill(proc.pid, signum)  # the process only: its children are its to end
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if "nothing was written" in line]
    assert lines == [("Interrupted" if signum == signal.SIGINT else "Terminated")
                     + ": nothing was written"], err
    assert "Traceback" not in err and "internal error" not in err and "TVM failed" not in err
    assert out.read_bytes() == previous.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["m.so"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 0)
        time.sleep(2)  # the linker wrapper was killed with the build
        os.killpg(proc.pid, 0)
        pytest.fail("a process of the build outlived it")


def test_a_killed_tune_leaves_no_worker_running(tmp_path):
    """SIGKILL gives tvmopt no chance to clean up: its TVM workers die with it."""
    import psutil

    model = models.tiny_conv(tmp_path / "tiny.onnx")
    proc = subprocess.Popen([*TVMOPT, "tune", str(model), "--target", "host", "--trials", "64",
                             "--batch-size", "16", "--db", str(tmp_path / "t.db")],
                            stderr=subprocess.PIPE, text=True)
    _wait_for_line(proc, "tasks ")  # the baseline is measured: builder and runner workers exist
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]


def test_tvm_native_log_lines_stay_off_the_terminal(tmp_path):
    """TVM's C++ warnings (here "Detected pow(x, y) where y >= 3", and the embedding's "Fast mode
    segfaults ...") go to the log, shown with -v."""
    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "three"], ["y"])], "pow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(np.array(3.0, np.float32), "three")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    pow_model = tmp_path / "pow.onnx"
    onnx.save(model, str(pow_model))
    embedding = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 8])],
        [numpy_helper.from_array(np.ones((30, 8), np.float32), "table")])
    gather = tmp_path / "gather.onnx"
    model = helper.make_model(embedding, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(gather))
    db = str(tmp_path / "t.db")
    commands = [["tune", str(pow_model), "--target", "host", "--trials", "4", "--batch-size", "4",
                 "--db", db],
                ["build", str(pow_model), "--target", "host", "-o", str(tmp_path / "p.so"),
                 "--db", db, "--check"],
                ["run", str(tmp_path / "p.so"), "--inputs", str(tmp_path / "in.npz")]]
    np.savez(tmp_path / "in.npz", x=np.ones((4, 8), np.float32))
    commands.append(["build", str(gather), "--target", "host", "-o", str(tmp_path / "g.so"),
                     "--db", db])
    for command in commands:
        proc = subprocess.run([*TVMOPT, *command], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        native = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "/project/src/" in line or "Warning:" in line]
        assert native == [], command
    verbose = subprocess.run([*TVMOPT, "-v", "build", str(pow_model), "--target", "host", "-o",
                              str(tmp_path / "p.so"), "--db", db], capture_output=True, text=True)
    assert "Detected pow(x, y) where y >= 3" in verbose.stderr  # the log has it
    verbose = subprocess.run([*TVMOPT, "-v", *commands[-1]], capture_output=True, text=True)
    assert "Fast mode segfaults" in verbose.stderr


# MESSAGE: each a correct one-line error


def _external(tmp_path, location):
    return _matmul(tmp_path / "sub" / "m.onnx", external=location)


def _crafted(tmp_path, content):
    return _evil_library(tmp_path / "crafted.so", content, tmp_path / "unused")


def _message_cases():
    """(case ids, make(tmp_path, library, inputs) -> argv, fragments of the one error line)."""
    def secret(tmp):
        (tmp / "secret").mkdir(exist_ok=True)
        (tmp / "secret" / "key.txt").write_bytes(b"\0" * 1024)
        return tmp / "secret" / "key.txt"

    def through_link(tmp):
        model = _external(tmp, "weights.bin")
        (model.parent / "weights.bin").rename(tmp / "real.bin")
        (model.parent / "weights.bin").symlink_to(tmp / "real.bin")
        return ["build", model, "--target", "host", "-o", tmp / "x.so"]

    def through_dir_link(tmp):
        (tmp / "sub").mkdir()
        (tmp / "elsewhere").mkdir()  # reached through sub/d
        (tmp / "sub" / "d").symlink_to(tmp / "elsewhere")
        model = _matmul(tmp / "sub" / "m.onnx", external="weights.bin")
        (tmp / "sub" / "weights.bin").rename(tmp / "elsewhere" / "weights.bin")
        _relocate(model, "d/weights.bin")
        return ["build", model, "--target", "host", "-o", tmp / "x.so"]

    def fifo_weights(tmp):
        model = _external(tmp, "weights.bin")
        (model.parent / "weights.bin").unlink()
        os.mkfifo(model.parent / "weights.bin")
        return ["build", model, "--target", "host", "-o", tmp / "x.so"]

    return [
        ("H01 H02", lambda t, lib, i: (secret(t), ["build", _external(t, "../secret/key.txt"),
                                       "--target", "host", "-o", t / "x.so"])[1],
         ["outside the model's directory"]),
        ("H03", lambda t, lib, i: ["inspect", _external(t, str(secret(t)))],
         ["outside the model's directory"]),
        ("H04", lambda t, lib, i: through_link(t), ["symbolic link"]),
        ("H06", lambda t, lib, i: through_dir_link(t), ["symbolic link"]),
        ("BO06", lambda t, lib, i: fifo_weights(t), ["not a regular file (a pipe)"]),
        ("S03", lambda t, lib, i: ["run", _shared_library(t / "evil.so", "int f() { return 1; }"),
                                   "--inputs", i], ["not a tvmopt artifact"]),
        ("S05", lambda t, lib, i: ["profile", _shared_library(t / "z.so", "int f() { return 1; }")],
         ["not a tvmopt artifact"]),
        ("X01", lambda t, lib, i: ["inspect", _crafted(t, [1, 2, 3])], ["not one tvmopt wrote"]),
        ("X02", lambda t, lib, i: ["inspect", _crafted(t, {"format": 1})],
         ["not one tvmopt wrote"]),
        ("X03", lambda t, lib, i: ["run", _crafted(t, {"format": 1}), "--inputs", i],
         ["not one tvmopt wrote"]),
        ("T03", lambda t, lib, i: ["build", _matmul(t / "m.onnx"), "--target",
                                   '{"kind":"llvm","mcpu":"nonexistent-cpu"}', "-o", t / "x.so"],
         ["LLVM does not know the CPU 'nonexistent-cpu'"]),
        ("I10", lambda t, lib, i: ["build", models.conv_bn_relu(t / "c.onnx", batch="batch"),
                                   "--target", "host", "--input-shape", "x=1x3x16x16",
                                   "--input-shape", "x=2x3x16x16", "-o", t / "x.so"],
         ["--input-shape x is given twice"]),
        ("B04", lambda t, lib, i: ["bench", lib, "--batch", "0"], ["--batch must be at least 1"]),
        ("P06", lambda t, lib, i: ["db", "plot", "-o", f"{t}/plots/"], ["names a directory"]),
    ]


@pytest.mark.parametrize("case,make,fragments", _message_cases(),
                         ids=[c[0] for c in _message_cases()])
def test_environment_failures_are_one_line(case, make, fragments, library, tmp_path, invoke):
    lib, inputs = library
    argv = make(tmp_path, lib, inputs)
    result = invoke(*argv)
    assert_one_line_error(result, *fragments)
    assert "older tvmopt" not in result.output  # S03, S05: no claim about a foreign file
    assert not list(tmp_path.glob("x.so*"))


def test_a_json_target_for_another_architecture_links_with_its_cross_compiler():
    """T06: an aarch64 target given as JSON is linked by aarch64-linux-gnu-g++, not g++."""
    preset = targets.resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", '
                             '"mcpu": "cortex-a72", "mattr": ["+neon"]}')
    assert preset.cc == "aarch64-linux-gnu-g++" and preset.family == "arm"
