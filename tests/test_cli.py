"""The CLI end to end, and every bad input: one-line error, non-zero exit, no traceback."""

import re
import subprocess
import sys

import numpy as np
import pytest

import models
from conftest import assert_one_line_error, empty_database


def test_build_check_run_roundtrip(invoke, tmp_path, two_output_model):
    lib = tmp_path / "m.so"
    result = invoke("build", two_output_model, "--target", "host", "-o", lib, "--check")
    assert result.exit_code == 0, result.output
    assert "0 of 3 tasks tuned" in result.output
    assert "check passed" in result.output
    rng = np.random.default_rng(0)
    a = rng.random((4, 6), dtype=np.float32)
    idx = rng.integers(0, 5, (4, 5))
    np.savez(tmp_path / "in.npz", a=a, idx=idx)
    result = invoke("run", lib, "--inputs", tmp_path / "in.npz", "--output", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    from tvmopt.runtime import onnxruntime_outputs

    expected = onnxruntime_outputs(two_output_model, {"a": a, "idx": idx})
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == ["tanh_out", "total"]
        for name in out.files:
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)
    # the same through --input NAME=FILE.npy
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "idx.npy", idx)
    result = invoke("run", lib, "--input", f"a={tmp_path / 'a.npy'}",
                    "--input", f"idx={tmp_path / 'idx.npy'}")
    assert result.exit_code == 0 and "tanh_out: 4x5 float32" in result.output


def test_inspect_model_and_artifact(invoke, built_two_output, two_output_model):
    result = invoke("inspect", two_output_model)
    assert result.exit_code == 0
    assert "idx: 4x5 int64" in result.output and "unsupported ops: none" in result.output
    result = invoke("inspect", built_two_output)
    assert result.exit_code == 0
    assert "tuned     0 of 3 tasks" in result.output and "x86_64 ELF" in result.output


def test_check_fails_above_tolerance(invoke, tmp_path, conv_model):
    result = invoke("build", conv_model, "--target", "host", "-o", tmp_path / "h.so",
                    "--precision", "fp16", "--check", "--tolerance", "1e-9")
    assert_one_line_error(result, "--check failed", "exceeds 1e-09")


def test_build_reads_the_database_from_db_or_tvmopt_db(invoke, tmp_path, two_output_model,
                                                       isolated_db, monkeypatch):
    result = invoke("build", two_output_model, "--target", "host", "-o", tmp_path / "a.so")
    assert result.exit_code == 0 and f"(database {isolated_db})" in result.output  # TVMOPT_DB
    other = empty_database(tmp_path / "other.db")
    result = invoke("build", two_output_model, "--target", "host", "-o", tmp_path / "b.so",
                    "--db", other)
    assert result.exit_code == 0 and f"(database {other})" in result.output


@pytest.mark.parametrize("how", ["--db", "TVMOPT_DB"])
def test_build_with_a_mistyped_database_fails_and_creates_nothing(invoke, tmp_path, monkeypatch,
                                                                   two_output_model, how):
    typo = tmp_path / "tem.db"
    args = ["--db", typo] if how == "--db" else []
    if how == "TVMOPT_DB":
        monkeypatch.setenv("TVMOPT_DB", str(typo))
    before = sorted(tmp_path.iterdir())
    result = invoke("build", two_output_model, "--target", "host", "-o", tmp_path / "m.so", *args)
    assert_one_line_error(result, f"database {typo}: no such file")
    assert sorted(tmp_path.iterdir()) == before
    assert_one_line_error(invoke("db", "stats", *args), f"database {typo}: no such file")
    assert sorted(tmp_path.iterdir()) == before


def test_without_a_default_database_build_and_stats_say_no_records(invoke, tmp_path, monkeypatch,
                                                                  two_output_model):
    monkeypatch.delenv("TVMOPT_DB")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = invoke("build", two_output_model, "--target", "host", "-o", "m.so")
    assert result.exit_code == 0, result.output
    assert result.output.count("no tuning database at tuning_logs/tvmopt.db yet") == 1
    assert re.search(r"0 of [1-9][0-9]* tasks tuned", result.output)
    result = invoke("db", "stats")
    assert result.exit_code == 0 and "no tuning records yet" in result.output
    assert sorted(p.name for p in work.iterdir()) == ["m.so"]  # no database was created


# --- bad input --------------------------------------------------------------------------------


def test_missing_model_file(invoke, tmp_path):
    assert_one_line_error(invoke("build", tmp_path / "nope.onnx", "--target", "host", "-o",
                                 tmp_path / "o.so"), "no such file")


def test_not_onnx(invoke, tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("hello, I am not a model\n" * 20)
    assert_one_line_error(invoke("inspect", bad), "notes.onnx", "not")


def test_truncated_onnx(invoke, tmp_path, conv_model):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(conv_model.read_bytes()[:700])
    result = invoke("build", bad, "--target", "host", "-o", tmp_path / "o.so")
    assert_one_line_error(result, "cut.onnx")
    assert not (tmp_path / "o.so").exists()


def test_unsupported_op(invoke, tmp_path):
    path = models.unsupported_ops(tmp_path / "u.onnx")
    assert_one_line_error(invoke("build", path, "--target", "host", "-o", tmp_path / "o.so"),
                          "Celu (node my_celu)", "LpNormalization (node my_lpnorm)")
    result = invoke("inspect", path)
    assert result.exit_code == 0 and "Celu (node my_celu)" in result.output


def test_dynamic_dims_without_input_shape(invoke, tmp_path, dynamic_model):
    assert_one_line_error(invoke("build", dynamic_model, "--target", "host", "-o",
                                 tmp_path / "o.so"), "dynamic", "--input-shape x=1x3x16x16")


def test_input_shape_names_unknown_input(invoke, tmp_path, dynamic_model):
    assert_one_line_error(invoke("build", dynamic_model, "--target", "host", "-o", tmp_path / "o.so",
                                 "--input-shape", "images=1x3x16x16"), "unknown input 'images'", "x")


def test_unknown_target(invoke, tmp_path, conv_model):
    assert_one_line_error(invoke("build", conv_model, "--target", "tpu-v9", "-o", tmp_path / "o.so"),
                          "unknown target 'tpu-v9'", "host")


@pytest.mark.parametrize("arrays,fragment", [
    ({"a": np.zeros((4, 7), np.float32), "idx": np.zeros((4, 5), np.int64)}, "shape 4x7"),
    ({"a": np.zeros((4, 6), np.float64), "idx": np.zeros((4, 5), np.int64)}, "dtype float64"),
    ({"a": np.zeros((4, 6), np.float32)}, "missing input 'idx'"),
])
def test_run_with_wrong_inputs(invoke, tmp_path, built_two_output, arrays, fragment):
    np.savez(tmp_path / "in.npz", **arrays)
    assert_one_line_error(invoke("run", built_two_output, "--inputs", tmp_path / "in.npz"), fragment)


def test_run_without_inputs(invoke, built_two_output):
    assert_one_line_error(invoke("run", built_two_output), "--inputs")


def test_load_library_that_is_not_tvmopt(invoke, tmp_path):
    src = tmp_path / "plain.c"
    src.write_text("int answer(void) { return 42; }\n")
    lib = tmp_path / "plain.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    np.savez(tmp_path / "in.npz", x=np.zeros(1))
    assert_one_line_error(invoke("run", lib, "--inputs", tmp_path / "in.npz"),
                          "not a tvmopt artifact")
    fake = tmp_path / "fake.so"
    fake.write_text("not a library")
    assert_one_line_error(invoke("inspect", fake), "not a 64-bit ELF")


def test_real_process_exit_code_and_stderr(tmp_path):
    """Outside CliRunner: the installed entry point exits 1 with one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "tvmopt", "inspect", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
