"""Nothing a user owns is clobbered; edited databases cannot smuggle in impossible latencies;
presets and artifacts are treated as the code they are."""

import hashlib
import json
import sqlite3

import numpy as np
import pytest

import records
from conftest import assert_one_line_error, empty_database
from tvmopt.database import open_database


def _target(d):
    import tvm

    return tvm.target.Target(d)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def team_db(tmp_path):
    path = tmp_path / "team.db"
    with open_database(path) as store:
        store.for_target(_target(records.X86)).commit_tuning_record(
            records.record(records.workload(0), [1e-5], records.X86))
    return path


@pytest.mark.parametrize("victim", ["the model", "the database", "a text file", "a directory"])
def test_build_never_replaces_what_the_user_owns(invoke, tmp_path, conv_model, team_db, victim):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    target = {"the model": conv_model, "the database": team_db, "a text file": notes,
              "a directory": tmp_path}[victim]
    before = _digest(target) if target.is_file() else None
    result = invoke("build", conv_model, "--target", "host", "-o", target, "--db", team_db)
    expected = {"the model": "is the model being built", "the database": "is the tuning database",
                "a text file": "exists and is not a tvmopt library",
                "a directory": "names a directory"}[victim]
    assert_one_line_error(result, expected)
    if before is not None:
        assert _digest(target) == before
    with sqlite3.connect(team_db) as conn:
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    assert not list(tmp_path.glob(".*.partial"))


def test_build_refuses_a_device_file(invoke, tmp_path, conv_model):
    assert_one_line_error(invoke("build", conv_model, "--target", "host", "-o", "/dev/null"),
                          "not a regular file")


@pytest.mark.parametrize("out, expected", [
    ("", "-o is empty"),
    ("newdir/", "names a directory"),
    ("missing/m.so", "does not exist; create it first"),
])
def test_build_output_path_mistakes_are_one_line(invoke, tmp_path, conv_model, monkeypatch,
                                                 out, expected):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(invoke("build", conv_model, "--target", "host", "-o", out), expected)
    assert not (tmp_path / "newdir").exists() and not (tmp_path / "missing").exists()


def test_build_replaces_its_own_library(invoke, tmp_path, conv_model):
    lib = tmp_path / "m.so"
    assert invoke("build", conv_model, "--target", "host", "-o", lib).exit_code == 0
    first = _digest(lib)
    result = invoke("build", conv_model, "--target", "host", "-o", lib, "--layout", "NHWC")
    assert result.exit_code == 0, result.output
    assert _digest(lib) != first


def test_run_never_writes_over_its_inputs_or_library(invoke, tmp_path, built_two_output):
    import tvmopt
    from tvmopt import runtime

    inputs = tmp_path / "in.npz"
    np.savez(inputs, **runtime.random_inputs(tvmopt.load(built_two_output).inputs))
    before = _digest(inputs), _digest(built_two_output)
    for out in (inputs, built_two_output):
        assert_one_line_error(invoke("run", built_two_output, "--inputs", inputs, "-o", out),
                              "writing there would destroy it")
    assert (_digest(inputs), _digest(built_two_output)) == before
    result = invoke("run", built_two_output, "--inputs", inputs, "-o", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "out.npz") as saved:
        assert set(saved.files) == {s.name for s in tvmopt.load(built_two_output).outputs}


def test_sha256_pin_refuses_another_file(invoke, tmp_path, built_two_output):
    good = hashlib.sha256(built_two_output.read_bytes()).hexdigest()
    result = invoke("profile", built_two_output, "--sha256", good, "--repeat", "3", "--json")
    assert result.exit_code == 0, result.output
    assert_one_line_error(invoke("bench", built_two_output, "--sha256", "0" * 64),
                          "not the pinned", "do not load it")


def _export(tmp_path, run_secs):
    """A database exported to TVM's JSON files, then edited by hand to hold `run_secs`."""
    from click.testing import CliRunner

    from tvmopt.cli import cli

    src = tmp_path / "src.db"
    with open_database(src) as store:
        store.for_target(_target(records.X86)).commit_tuning_record(
            records.record(records.workload(0), [2e-6], records.X86))
    out = tmp_path / "json"
    assert CliRunner().invoke(cli, ["db", "export", "-o", str(out), "--db", str(src)]).exit_code == 0
    path = out / "database_tuning_record.json"
    line = json.loads(path.read_text())
    line[1][1] = run_secs
    path.write_text(json.dumps(line) + "\n")
    return out


@pytest.mark.parametrize("run_secs", [[-1.0], [0.0]])
def test_import_refuses_latencies_that_no_measurement_gives(invoke, tmp_path, run_secs):
    out = _export(tmp_path, run_secs)
    dst = empty_database(tmp_path / "dst.db")
    result = invoke("db", "import", out, "--db", dst)
    assert result.exit_code == 0, result.output
    assert "0 records added" in result.output and "1 with a latency of zero or less" in result.output
    with open_database(dst, readonly=True) as store:
        assert store.count_records() == 0


def test_merge_skips_records_with_impossible_latencies(invoke, tmp_path):
    other = tmp_path / "other.db"
    with open_database(other) as store:
        db = store.for_target(_target(records.X86))
        db.commit_tuning_record(records.record(records.workload(0), [3e-6], records.X86, split=2))
        db.commit_tuning_record(records.record(records.workload(0), [4e-6], records.X86, split=8))
        store.conn.execute("UPDATE records SET run_secs_json = '[-1.0]', mean_sec = -1.0 "
                           "WHERE mean_sec < 3.5e-6")  # an edited file
    dst = empty_database(tmp_path / "dst.db")
    result = invoke("db", "merge", other, "--db", dst)
    assert result.exit_code == 0, result.output
    assert "1 records" in result.output and "skipped 1 records" in result.output
    with open_database(dst, readonly=True) as store:
        assert [r["mean_sec"] for r in store.db["records"].rows] == pytest.approx([4e-6])


def test_a_preset_that_shadows_a_builtin_is_announced(invoke, tmp_path, monkeypatch):
    (tmp_path / "host.json").write_text(json.dumps({
        "description": "mine", "family": "x86", "cc": "g++",
        "target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"}}))
    monkeypatch.setenv("TVMOPT_TARGETS_PATH", str(tmp_path))
    result = invoke("targets", "show", "host")
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'host.json'} from TVMOPT_TARGETS_PATH instead of the built-in" in result.output
