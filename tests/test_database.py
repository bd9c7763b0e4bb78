import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import records
from conftest import assert_one_line_error
from tvmopt.database import open_database
from tvmopt.errors import TvmoptError

WRITER = [sys.executable, str(Path(records.__file__))]


def _target(d):
    import tvm

    return tvm.target.Target(d)


def _integrity(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


SCHEMA = {
    "workloads": {"id": int, "ir_sha256": str, "shash": str, "name": str, "ir_json": str,
                  "created_at": str},
    "runs": {"id": int, "uid": str, "host": str, "user": str, "model_sha256": str, "command": str,
             "target_key": str, "trials": int, "started_at": str, "ended_at": str},
    "records": {"id": int, "uid": str, "workload_id": int, "target_sha256": str, "target_key": str,
                "target_json": str, "trace_json": str, "run_secs_json": str, "mean_sec": float,
                "args_info_json": str, "device": str, "tvm_version": str, "run_uid": str,
                "created_at": str},
    "failures": {"id": int, "workload_id": int, "target_sha256": str, "target_key": str,
                 "trace_sha256": str, "run_uid": str, "created_at": str},
    "run_tasks": {"run_uid": str, "ir_sha256": str, "task": str, "weight": int},
    "tactic_records": {"id": int, "uid": str, "layer_key": str, "provider": str, "tactic": str,
                       "target_sha256": str, "target_key": str, "target_json": str,
                       "run_secs_json": str, "mean_sec": float, "error": str, "device": str,
                       "library_version": str, "run_uid": str, "created_at": str},
}
INDEXES = {  # (table, columns, unique)
    ("workloads", ("ir_sha256",), True), ("runs", ("uid",), True), ("records", ("uid",), True),
    ("records", ("workload_id", "target_sha256", "mean_sec"), False),
    ("failures", ("workload_id", "target_sha256", "trace_sha256"), True),
    ("run_tasks", ("run_uid", "ir_sha256"), True), ("tactic_records", ("uid",), True),
    ("tactic_records", ("layer_key", "target_sha256", "mean_sec"), False),
}


def test_schema_created_by_migrations(tmp_path):
    with open_database(tmp_path / "t.db") as store:
        tables = {t: store.db[t].columns_dict for t in store.db.table_names()
                  if t != "_sqlite_migrations"}
        indexes = {(t, tuple(i.columns), bool(i.unique)) for t in tables
                   for i in store.db[t].indexes}
        applied = [r["name"] for r in store.db["_sqlite_migrations"].rows]
    assert tables == SCHEMA
    assert indexes == INDEXES
    assert applied == ["m001_initial", "m002_run_tasks", "m003_route_free_record_identity",
                       "m004_tactic_records"]
    # reopening applies nothing twice
    with open_database(tmp_path / "t.db") as store:
        assert store.db["_sqlite_migrations"].count == 4


def test_lookup_is_target_aware(tmp_path):
    mod = records.workload(0)
    with open_database(tmp_path / "t.db") as store:
        x86 = store.for_target(_target(records.X86))
        arm = store.for_target(_target(records.ARM))
        x86.commit_tuning_record(records.record(mod, [2e-6], records.X86, split=2))
        arm.commit_tuning_record(records.record(mod, [1e-6], records.ARM, split=8))
        import tvm.s_tir.meta_schedule as ms

        w = ms.database.Workload(mod)
        (best_x86,) = x86.get_top_k(w, 5)
        (best_arm,) = arm.get_top_k(w, 5)
        assert float(best_x86.run_secs[0]) == pytest.approx(2e-6)
        assert float(best_arm.run_secs[0]) == pytest.approx(1e-6)
        queried = x86.query_tuning_record(mod, _target(records.ARM), "main")
        assert float(queried.run_secs[0]) == pytest.approx(1e-6)
        assert len(x86) == 1 and len(arm) == 1
        assert arm.query_tuning_record(mod, _target(records.X86), "main") is not None
        other = _target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"})
        assert store.for_target(other).query_tuning_record(mod, other, "main") is None


def test_failed_candidates_kept_compactly_never_best(tmp_path):
    mod = records.workload(0)
    with open_database(tmp_path / "t.db") as store:
        db = store.for_target(_target(records.X86))
        db.commit_tuning_record(records.record(mod, [1e10], records.X86, split=2))  # failed build
        db.commit_tuning_record(records.record(mod, [], records.X86, split=4))  # failed run
        assert db.get_top_k(__import__("tvm").s_tir.meta_schedule.database.Workload(mod), 3) == []
        db.commit_tuning_record(records.record(mod, [5e-6], records.X86, split=8))
        import tvm.s_tir.meta_schedule as ms

        (best,) = db.get_top_k(ms.database.Workload(mod), 3)
        assert float(best.run_secs[0]) == pytest.approx(5e-6)
        assert store.db["failures"].count == 2
        assert set(store.db["failures"].columns_dict) >= {"trace_sha256"}
        assert "trace_json" not in store.db["failures"].columns_dict


def test_four_concurrent_writers(tmp_path):
    path = tmp_path / "shared.db"
    procs = [subprocess.Popen([*WRITER, str(path), "200", str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "locked" not in err
    with open_database(path, readonly=True) as store:
        assert store.count_records() == 800
        assert store.db["workloads"].count == 4
    assert _integrity(path) == "ok"


def test_kill_9_mid_run_loses_nothing_committed(tmp_path):
    path = tmp_path / "crash.db"
    proc = subprocess.Popen([*WRITER, str(path), "100000", "7"], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.monotonic() + 120
    while committed < 50 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert committed >= 50
    with open_database(path) as store:  # opens for writing, as the next tuner would
        assert store.count_records() >= committed
    assert _integrity(path) == "ok"


def _filled(tmp_path, name, run, secs, target=records.X86):
    path = tmp_path / name
    with open_database(path) as store:
        db = store.for_target(_target(target), device=f"dev-{name}", run_uid=run)
        for i, s in enumerate(secs):
            db.commit_tuning_record(records.record(records.workload(i % 2), [s], target,
                                                   split=2 ** (1 + i)))
    return path


def test_merge_is_idempotent_and_keeps_provenance(tmp_path, invoke):
    a = _filled(tmp_path, "a.db", "run-a", [1e-5, 2e-5])
    b = _filled(tmp_path, "b.db", "run-b", [3e-6, 4e-6, 5e-6], target=records.ARM)
    result = invoke("db", "merge", b, "--db", a)
    assert result.exit_code == 0, result.output
    assert "3 records" in result.output
    result = invoke("db", "merge", b, "--db", a)
    assert "0 workloads, 0 runs, 0 records, 0 failures, 0 tactic records added" in result.output
    with open_database(a, readonly=True) as store:
        assert store.count_records() == 5
        devices = {r["device"] for r in store.db["records"].rows}
        assert devices == {"dev-a.db", "dev-b.db"}
        assert {r["run_uid"] for r in store.db["records"].rows} == {"run-a", "run-b"}
        assert store.db["workloads"].count == 2


def test_prune_keeps_best_n_per_workload_and_target(tmp_path, invoke):
    path = _filled(tmp_path, "p.db", "r", [5e-6, 4e-6, 3e-6, 2e-6, 1e-6, 6e-6])
    result = invoke("db", "prune", "--keep", "1", "--db", path)
    assert result.exit_code == 0 and "deleted 4 records" in result.output
    with open_database(path, readonly=True) as store:
        best = sorted(r["mean_sec"] for r in store.db["records"].rows)
    assert best == pytest.approx([1e-6, 2e-6])
    assert_one_line_error(invoke("db", "prune", "--keep", "0", "--db", path), "--keep")


def test_export_is_readable_by_plain_tvm_and_imports_back(tmp_path, invoke):
    import tvm.s_tir.meta_schedule as ms

    src = _filled(tmp_path, "src.db", "r", [3e-6, 1e-6, 2e-6])
    with open_database(src) as store:  # failures are not exported
        store.for_target(_target(records.X86)).commit_tuning_record(
            records.record(records.workload(0), [1e10], records.X86, split=16))
    out = tmp_path / "json"
    result = invoke("db", "export", "--format", "json", "-o", out, "--db", src)
    assert result.exit_code == 0, result.output
    plain = ms.database.JSONDatabase(work_dir=str(out), allow_missing=False)
    assert len(plain.get_all_tuning_records()) == 3
    # workload 0 got 3e-6 and 2e-6 (workload 1 got 1e-6)
    best = plain.query_tuning_record(records.workload(0), _target(records.X86), "main")
    assert float(best.run_secs[0]) == pytest.approx(2e-6)

    dst = tmp_path / "dst.db"
    result = invoke("db", "import", out, "--db", dst)
    assert result.exit_code == 0 and "3 records added" in result.output
    result = invoke("db", "import", out, "--db", dst)
    assert "0 records added, 3 already present" in result.output
    with open_database(dst, readonly=True) as store:
        assert sorted(r["mean_sec"] for r in store.db["records"].rows) == pytest.approx(
            [1e-6, 2e-6, 3e-6])
    assert_one_line_error(invoke("db", "import", tmp_path / "nowhere", "--db", dst),
                          "database_workload.json")


def test_stats_and_show(tmp_path, invoke):
    path = _filled(tmp_path, "s.db", "r", [3e-6, 1e-6, 2e-6])
    result = invoke("db", "stats", "--json", "--db", path)
    assert result.exit_code == 0
    (target,) = json.loads(result.stdout)["targets"]
    assert target["target_key"] == "llvm/x86_64/haswell"
    assert (target["workloads"], target["records"]) == (2, 3)
    assert sorted(b["best_sec"] for b in target["best"]) == pytest.approx([1e-6, 2e-6])
    result = invoke("db", "show", str(target["best"][0]["workload_id"]), "--db", path, "--ir")
    assert result.exit_code == 0 and "llvm/x86_64/haswell" in result.output
    assert "T.prim_func" in result.output
    assert_one_line_error(invoke("db", "show", "nope", "--db", path), "no workload matches")


def _bad_files(tmp_path):
    good = _filled(tmp_path, "good.db", "r", [1e-6] * 2)
    with sqlite3.connect(good) as conn:  # fold the WAL into the file so truncation bites
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    data = good.read_bytes()
    files = {
        "text.db": b"this is a text file\n" * 50,
        "truncated.db": data[: len(data) // 2],
        "corrupt.db": data[:4096] + b"\xde\xad\xbe\xef" * ((len(data) - 4096) // 4),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    newer = tmp_path / "newer.db"
    newer.write_bytes(data)
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                     "VALUES ('tvmopt', 'm999_from_the_future', '2030')")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    return {
        "text.db": "not a SQLite file", "truncated.db": "truncated", "corrupt.db": "corrupt",
        "newer.db": "newer tvmopt", "foreign.db": "not a tvmopt tuning database",
    }


def test_bad_database_files_are_refused_and_left_untouched(tmp_path, invoke, conv_model):
    for name, fragment in _bad_files(tmp_path).items():
        path = tmp_path / name
        before = path.read_bytes()
        assert_one_line_error(invoke("db", "stats", "--db", path), fragment)
        assert_one_line_error(invoke("db", "merge", path, "--db", tmp_path / "fresh.db"), fragment)
        assert_one_line_error(invoke("build", conv_model, "--target", "host", "-o",
                                     tmp_path / "o.so", "--db", path), fragment)
        assert path.read_bytes() == before, name
        with pytest.raises(TvmoptError):
            open_database(path)
        assert path.read_bytes() == before, name


def test_a_round_of_records_commits_together_or_not_at_all(tmp_path):
    """The tuner writes a round inside one `write()`: record writes join it, and a failure
    part-way leaves none of the round's records behind."""
    mod = records.workload(0)
    with open_database(tmp_path / "t.db") as store:
        db = store.for_target(_target(records.X86))
        with pytest.raises(RuntimeError), store.write():
            for split, secs in ((2, 1e-6), (4, 2e-6)):
                db.commit_tuning_record(records.record(mod, [secs], records.X86, split=split))
            assert store.count_records() == 2  # visible inside the transaction
            raise RuntimeError("the tuner died mid-round")
        assert store.count_records() == 0
        with store.write():
            for split, secs in ((2, 1e-6), (4, 2e-6)):
                db.commit_tuning_record(records.record(mod, [secs], records.X86, split=split))
    with open_database(tmp_path / "t.db", readonly=True) as store:
        assert store.count_records() == 2


def test_a_measurement_that_arrives_by_two_routes_is_stored_once(tmp_path, invoke):
    """Exported to TVM's files and imported, then the original merged too: one row per
    measurement, the trial budget counts each once, and the measuring device is kept."""
    src = _filled(tmp_path, "src.db", "run-src", [1e-5, 2e-5, 3e-5])
    out = tmp_path / "json"
    assert invoke("db", "export", "-o", out, "--db", src).exit_code == 0
    team = tmp_path / "team.db"
    assert "3 records added" in invoke("db", "import", out, "--db", team).output
    result = invoke("db", "merge", src, "--db", team)
    assert result.exit_code == 0 and ", 0 records," in result.output, result.output
    with open_database(team, readonly=True) as store:
        assert store.count_records() == 3
        assert {r["device"] for r in store.db["records"].rows} == {"dev-src.db"}
        tsha = store.db["records"].get(1)["target_sha256"]
        assert sum(store.count_trials(w, tsha) for w in store.workload_ids_for_target(tsha)) == 3


def test_opening_an_older_file_folds_its_duplicate_measurements(tmp_path):
    path = _filled(tmp_path, "old.db", "run-1", [1e-5, 2e-5])
    with sqlite3.connect(path) as conn:  # as schema m002 stored a measurement seen twice
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_route_free_record_identity'")
        conn.execute("INSERT INTO records (uid, workload_id, target_sha256, target_key, target_json,"
                     " trace_json, run_secs_json, mean_sec, args_info_json, device, tvm_version, "
                     "run_uid, created_at) SELECT 'old-' || uid, workload_id, target_sha256, "
                     "target_key, target_json, trace_json, run_secs_json, mean_sec, args_info_json,"
                     " NULL, tvm_version, 'import:x', created_at FROM records")
        assert conn.execute("SELECT count(*) FROM records").fetchone()[0] == 4
    with open_database(path) as store:
        rows = list(store.db["records"].rows)
    assert len(rows) == 2 and {r["device"] for r in rows} == {"dev-old.db"}
    assert {r["run_uid"] for r in rows} == {"run-1"}


SHIPPED_DB = Path(__file__).parent.parent / "tuning_logs" / "h100-sm90a.db"


def test_the_shipped_database_exports_imports_back_and_shows(tmp_path, invoke):
    """Its tensor-core records name wmma intrinsics that TVM registers only on request: every
    trace parse registers them first (export replays each trace, import's TVM reader too)."""
    import hashlib
    import shutil

    shipped_sha = hashlib.sha256(SHIPPED_DB.read_bytes()).hexdigest()
    src = tmp_path / SHIPPED_DB.name
    shutil.copyfile(SHIPPED_DB, src)  # the shipped file itself is never opened
    out, dst = tmp_path / "export", tmp_path / "imported.db"
    start = time.monotonic()
    result = invoke("db", "export", "-o", out, "--db", src)
    exported = time.monotonic() - start
    assert result.exit_code == 0, result.output
    result = invoke("db", "import", out, "--db", dst)
    assert result.exit_code == 0, result.output
    print(f"whole shipped database: export {exported:.1f} s (intrinsics registered in it), "
          f"import {time.monotonic() - start - exported:.1f} s")

    def best_per_workload(path):
        stats = json.loads(invoke("db", "stats", "--json", "--db", path).stdout)["targets"]
        return {(t["target_key"], b["ir_sha256"]): (t["workloads"], t["records"], b["records"],
                                                    b["best_sec"])
                for t in stats for b in t["best"]}

    shipped, imported = best_per_workload(src), best_per_workload(dst)
    assert {counts[:2] for counts in shipped.values()} == {(41, 159)}
    assert imported.keys() == shipped.keys()
    for key, (*counts, best_sec) in shipped.items():
        # The same run seconds; the shipped file's means were summed in another order (1 ulp).
        assert imported[key] == (*counts, pytest.approx(best_sec, rel=1e-12))
    # "1" is workload 1's id and the start of another's IR hash: the id wins.
    for query in ("1", "fused_conv2d16_cast26_add9_relu7"):
        result = invoke("db", "show", query, "--db", src, "--ir")
        assert result.exit_code == 0, result.output
        assert "workload 1  fused_conv2d16_cast26_add9_relu7" in result.output
        assert "cuda/sm_90a" in result.output and "T.prim_func" in result.output
    assert hashlib.sha256(SHIPPED_DB.read_bytes()).hexdigest() == shipped_sha
