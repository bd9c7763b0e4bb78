"""What a user can fix gets a message naming the problem: never "internal error", never "corrupt"
for an intact file, and the files involved stay as they were."""

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto

import models
import records
from conftest import assert_one_line_error, empty_database
from tvmopt.database import open_database


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _drop_file_override_capabilities():
    """Root ignores file permissions through CAP_DAC_OVERRIDE/READ_SEARCH; without them (dropped
    from the bounding set before exec) root meets permissions as any user does."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _tvmopt_as_a_user(*args, cwd):
    """The CLI in a subprocess subject to file permissions even when the tests run as root."""
    result = subprocess.run([sys.executable, "-m", "tvmopt", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600,
                            preexec_fn=_drop_file_override_capabilities if os.geteuid() == 0
                            else None)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def read_only_dir(tmp_path, conv_model):
    """A tuning database with one record and a copy of the model, in a directory nobody may write."""
    import tvm

    directory = tmp_path / "shared"
    directory.mkdir()
    shutil.copy(conv_model, directory / "m.onnx")
    with open_database(directory / "team.db") as store:
        store.for_target(tvm.target.Target(records.X86)).commit_tuning_record(
            records.record(records.workload(0), [1e-5], records.X86))
    directory.chmod(0o555)
    yield directory
    directory.chmod(0o755)


def test_a_database_in_a_read_only_directory_is_read(read_only_dir, tmp_path):
    db = read_only_dir / "team.db"
    before = _digest(db)
    code, out = _tvmopt_as_a_user("db", "stats", "--db", db, cwd=tmp_path)
    assert code == 0 and "1 records" in out.replace("1 record ", "1 records "), out
    code, out = _tvmopt_as_a_user("build", read_only_dir / "m.onnx", "--target", "host",
                                  "-o", tmp_path / "m.so", "--db", db, cwd=tmp_path)
    assert code == 0, out
    assert "corrupt" not in out
    code, out = _tvmopt_as_a_user("tune", read_only_dir / "m.onnx", "--target", "host",
                                  "--trials", "4", "--db", db, cwd=tmp_path)
    assert code == 1 and "cannot write to it or to its directory" in out, out
    assert "internal error" not in out and "Traceback" not in out
    assert _digest(db) == before and sorted(p.name for p in read_only_dir.iterdir()) == [
        "m.onnx", "team.db"]


def test_output_into_a_read_only_directory_is_one_line(read_only_dir, tmp_path):
    code, out = _tvmopt_as_a_user("build", read_only_dir / "m.onnx", "--target", "host", "-o",
                                  read_only_dir / "m.so", cwd=tmp_path)
    assert code == 1 and "cannot write to" in out and "choose a writable directory" in out, out
    assert "Traceback" not in out and sorted(p.name for p in read_only_dir.iterdir()) == [
        "m.onnx", "team.db"]


def test_a_read_only_database_file_fails_tune_before_tuning(tmp_path, conv_model):
    db = tmp_path / "team.db"
    empty_database(db).chmod(0o444)
    before = _digest(db)
    code, out = _tvmopt_as_a_user("tune", conv_model, "--target", "host", "--trials", "4",
                                  "--db", db, cwd=tmp_path)
    assert code == 1 and "cannot write to it" in out and "trials" not in out.lower(), out
    assert _digest(db) == before


def test_a_zero_byte_database_is_an_empty_one(invoke, tmp_path, conv_model):
    db = tmp_path / "zero.db"
    db.touch()
    result = invoke("db", "stats", "--db", db)
    assert result.exit_code == 0 and "no tuning records yet" in result.output, result.output
    result = invoke("build", conv_model, "--target", "host", "-o", tmp_path / "m.so", "--db", db)
    assert result.exit_code == 0, result.output
    assert db.stat().st_size == 0


def test_check_names_why_onnx_runtime_cannot_load_the_model(invoke, tmp_path, monkeypatch):
    import onnxruntime

    # Which models an ONNX Runtime release refuses changes from release to release: the refusal
    # here is ORT's own message for an IR version it does not read, raised as its loader does.
    refusal = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/"
               "onnxruntime/core/graph/model.cc:180 onnxruntime::Model::Model(ModelProto&&, "
               "const PathString&, const IOnnxRuntimeOpSchemaRegistryList*, const "
               "logging::Logger&, const ModelOptions&) Unsupported model IR version: 14, max "
               "supported IR version: 11")

    def refuse(*args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.Fail(refusal)

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    model = models.one_relu(tmp_path / "ir14.onnx", ir_version=14)
    result = invoke("build", model, "--target", "host", "-o", tmp_path / "m.so", "--check")
    assert_one_line_error(result, "ONNX Runtime", "Unsupported model IR version: 14",
                          "the build itself succeeded")
    assert "/onnxruntime_src/" not in result.output


def test_bfloat16_inputs_run_bench_and_check(invoke, tmp_path):
    import ml_dtypes

    model = models.one_relu(tmp_path / "bf16.onnx", dtype=TensorProto.BFLOAT16, cast=True)
    lib = tmp_path / "m.so"
    result = invoke("build", model, "--target", "host", "-o", lib, "--check")
    assert result.exit_code == 0 and "check passed" in result.output, result.output
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.array([[-2, -0.5, 0.5, 3]], ml_dtypes.bfloat16))  # stored as V2
    result = invoke("run", lib, "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["y"], [[0, 0, 0.5, 3]])
    assert invoke("bench", lib, "--iterations", "5", "--warmup", "1").exit_code == 0
    np.savez(inputs, x=np.ones((1, 4), np.float32))
    assert_one_line_error(invoke("run", lib, "--inputs", inputs),
                          "has dtype float32, the model expects bfloat16")


def test_a_npy_given_to_inputs_says_how_to_pass_it(invoke, tmp_path, built_two_output):
    import tvmopt
    from tvmopt import runtime

    spec = tvmopt.load(built_two_output).inputs[0]
    npy = tmp_path / "x.npy"
    np.save(npy, runtime.random_inputs([spec])[spec.name])
    assert_one_line_error(invoke("run", built_two_output, "--inputs", npy),
                          "a .npy file", f"--input {spec.name}={npy}")


@pytest.mark.parametrize("make, args, expected", [
    (lambda p: models.one_relu(p, ("n", 4)), ["--input-shape", "x=99999999999999999999x4"],
     "does not fit in the 64-bit sizes"),
    (lambda p: models.one_relu(p, dtype=TensorProto.STRING), [],
     "input 'x' is a string tensor"),
    (lambda p: models.one_relu(p, outputs=False), [], "declares no outputs"),
    (lambda p: models.one_relu(p, (0, 4)), [], "declares a dimension of size 0"),
])
def test_model_declarations_a_build_cannot_use_are_named(invoke, tmp_path, make, args, expected):
    model = make(tmp_path / "m.onnx")
    before = _digest(model)
    result = invoke("build", model, "--target", "host", "-o", tmp_path / "m.so", *args)
    assert_one_line_error(result, expected)
    assert _digest(model) == before and not (tmp_path / "m.so").exists()


def test_a_declared_zero_dim_can_be_given_a_size(invoke, tmp_path):
    model = models.one_relu(tmp_path / "m.onnx", (0, 4))
    result = invoke("build", model, "--target", "host", "-o", tmp_path / "m.so",
                    "--input-shape", "x=2x4")
    assert result.exit_code == 0, result.output


def test_inputs_bigger_than_memory_are_refused_before_allocating(invoke, tmp_path):
    model = models.one_relu(tmp_path / "m.onnx", (100000, 100000, 1000))
    lib = tmp_path / "m.so"
    assert_one_line_error(invoke("build", model, "--target", "host", "-o", lib, "--check"),
                          "input 'x' (100000x100000x1000 float32) alone needs 36.4 TiB")
    assert_one_line_error(invoke("bench", lib), "alone needs 36.4 TiB")


def test_a_damaged_library_is_refused_before_it_is_loaded(invoke, tmp_path, built_two_output):
    from tvmopt import manifest

    assert manifest.integrity(built_two_output) == "intact"
    damaged = tmp_path / "damaged.so"
    data = bytearray(built_two_output.read_bytes())
    data[len(data) // 3] ^= 0xFF  # code or data, not the headers: it still reads as a library
    damaged.write_bytes(data)
    assert "DAMAGED" in invoke("inspect", damaged).output
    for command in ("run", "bench", "profile"):
        extra = ["--input", "x=unused.npy"] if command == "run" else []
        assert_one_line_error(invoke(command, damaged, *extra), "damaged: its bytes differ")
