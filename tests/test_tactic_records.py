"""Kernel-library tactic records in the tuning database: target-aware lookup, failures, and the
team operations (merge, prune, export/import, stats) they share with MetaSchedule's records."""

import json

import pytest

from conftest import assert_one_line_error
from tvmopt.database import open_database, target_identity

H100 = {"kind": "cuda", "arch": "sm_90a", "max_threads_per_block": 1024}
A100 = {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024}
QKV = "gemm_f16_row_bias_128x2304x768x1"
FFN = "gemm_f16_row_bias_gelu_128x3072x768x1"


def _target(d):
    import tvm

    return tvm.target.Target(d)


def _tactics(path, target=H100, device="H100", run="run-1", scale=1.0):
    """Three tactics per layer, 128x128 the fastest on QKV, 64x64 on FFN; one failure."""
    with open_database(path) as store:
        for layer, times in ((QKV, {"128x128": 5e-6, "128x64": 6e-6, "64x64": 9e-6}),
                             (FFN, {"128x128": 9e-6, "128x64": 8e-6, "64x64": 7e-6})):
            for tactic, sec in times.items():
                assert store.add_tactic_record(
                    layer, "cutlass", tactic, _target(target), [sec * scale, sec * scale * 1.02],
                    device=device, library_version="nvcc 13", run_uid=run) == "added"
        assert store.add_tactic_record(QKV, "cutlass", "256x128", _target(target), None,
                                       error="CUTLASS cannot run M=128", device=device) == "added"
    return path


def test_best_tactic_is_per_layer_and_target_and_failures_are_remembered(tmp_path):
    path = _tactics(tmp_path / "t.db")
    _tactics(path, target=A100, device="A100", scale=3.0)
    h100, a100 = (target_identity(_target(t))[0] for t in (H100, A100))
    with open_database(path, readonly=True) as store:
        assert store.best_tactic(QKV, h100).tactic == "128x128"
        assert store.best_tactic(QKV, h100).mean_sec == pytest.approx(5.05e-6)
        assert store.best_tactic(FFN, h100).tactic == "64x64"
        assert store.best_tactic(QKV, a100).mean_sec == pytest.approx(15.15e-6)
        assert store.best_tactic("gemm_f16_row_plain_1x8x8x1", h100) is None
        # the failed tactic is never a best, but counts as measured: no tune runs it again
        assert store.measured_tactics(QKV, h100, "cutlass") == {"128x128", "128x64", "64x64",
                                                                "256x128"}
        assert store.measured_tactics(QKV, h100, "other-library") == set()


def test_times_no_measurement_gives_are_refused(tmp_path):
    with open_database(tmp_path / "t.db") as store:
        for secs in ([0.0], [-1e-6], [float("nan")], [float("inf")], []):
            assert store.add_tactic_record(QKV, "cutlass", "128x128", _target(H100), secs) \
                == "invalid"
        assert store.db["tactic_records"].count == 0


def test_merge_is_idempotent_and_keeps_provenance(tmp_path, invoke):
    a = _tactics(tmp_path / "a.db", device="host-a", run="run-a")
    b = _tactics(tmp_path / "b.db", target=A100, device="host-b", run="run-b")
    result = invoke("db", "merge", b, "--db", a)
    assert result.exit_code == 0 and "7 tactic records added" in result.output, result.output
    result = invoke("db", "merge", b, "--db", a)
    assert "0 tactic records added" in result.output
    with open_database(a, readonly=True) as store:
        rows = list(store.db["tactic_records"].rows)
    assert len(rows) == 14
    assert {(r["target_key"], r["device"], r["run_uid"]) for r in rows if r["mean_sec"]} == {
        ("cuda/sm_90a", "host-a", "run-a"), ("cuda/sm_80", "host-b", "run-b")}


def test_merge_skips_tactic_rows_an_edit_broke(tmp_path, invoke):
    import sqlite3

    b = _tactics(tmp_path / "b.db")
    with sqlite3.connect(b) as conn:
        conn.execute("UPDATE tactic_records SET run_secs_json = '[-1.0]' WHERE tactic = '64x64'")
        conn.execute("UPDATE tactic_records SET target_sha256 = 'forged' WHERE tactic = '128x64'")
    result = invoke("db", "merge", b, "--db", tmp_path / "a.db")
    assert result.exit_code == 0 and "3 tactic records added" in result.output, result.output


def test_prune_keeps_the_best_tactics_per_layer_and_the_failures(tmp_path, invoke):
    path = _tactics(tmp_path / "p.db")
    result = invoke("db", "prune", "--keep", "1", "--db", path)
    assert result.exit_code == 0 and "4 tactic records" in result.output, result.output
    with open_database(path, readonly=True) as store:
        kept = sorted((r["layer_key"], r["tactic"]) for r in store.db["tactic_records"].rows)
    assert kept == sorted([(FFN, "64x64"), (QKV, "128x128"), (QKV, "256x128")])


def test_export_and_import_carry_tactic_records(tmp_path, invoke):
    src = _tactics(tmp_path / "src.db")
    out = tmp_path / "json"
    result = invoke("db", "export", "-o", out, "--db", src)
    assert result.exit_code == 0 and "7 tactic records" in result.output, result.output
    lines = (out / "tvmopt_tactic_records.json").read_text().splitlines()
    assert len(lines) == 7 and {json.loads(line)["layer_key"] for line in lines} == {QKV, FFN}

    dst = tmp_path / "dst.db"
    result = invoke("db", "import", out, "--db", dst)
    assert result.exit_code == 0 and "tactic records: 7 added" in result.output, result.output
    result = invoke("db", "import", out, "--db", dst)
    assert "tactic records: 0 added, 7 already present" in result.output
    with open_database(dst, readonly=True) as store:
        assert store.best_tactic(FFN, target_identity(_target(H100))[0]).tactic == "64x64"

    (out / "tvmopt_tactic_records.json").write_text("{not json\n")
    assert_one_line_error(invoke("db", "import", out, "--db", dst), "not a tactic record")
    # An earlier export is replaced whole; a directory holding anything else is not touched.
    assert invoke("db", "export", "-o", out, "--db", src).exit_code == 0
    assert len((out / "tvmopt_tactic_records.json").read_text().splitlines()) == 7
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("db", "export", "-o", out, "--db", src),
                          "exists and is not a tvmopt export")
    assert (out / "notes.txt").read_text() == "mine"


def test_stats_list_each_layers_best_tactic(tmp_path, invoke):
    from records import record, workload

    path = _tactics(tmp_path / "s.db")
    with open_database(path) as store:  # stats are per target with records: add one
        store.for_target(_target(H100)).commit_tuning_record(record(workload(0), [1e-6], H100))
    result = invoke("db", "stats", "--json", "--db", path)
    (target,) = json.loads(result.stdout)["targets"]
    assert (target["tactic_records"], target["tactic_failures"]) == (6, 1)
    assert {(l["layer_key"], l["tactic"]) for l in target["layers"]} == {
        (QKV, "128x128"), (FFN, "64x64")}
    shown = invoke("db", "stats", "--db", path)
    assert shown.exit_code == 0 and "6 tactic records, 1 failed tactics" in shown.output
