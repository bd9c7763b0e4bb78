"""The tuning database's faults from outside (reliability probe 2026-12-07): hostile or damaged
files to import and merge, a database locked by another writer or on a full disk mid-tune, an
RPC tracker address where no tracker answers, an export onto a full disk. Each is one line that
says what to do, the right exit status, and nothing already stored is lost."""

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import models
import records
from conftest import assert_one_line_error, empty_database
from test_database import _filled
from tvmopt.database import open_database
from tvmopt.errors import TvmoptError

DEEP = 200_000  # TVM's JSON parsers crash (SIGSEGV) from some 5,000-20,000 levels


def _counts(path) -> tuple[int, int, str]:
    with sqlite3.connect(path) as conn:
        return (conn.execute("SELECT count(*) FROM records").fetchone()[0],
                conn.execute("SELECT count(*) FROM failures").fetchone()[0],
                conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """TVM's database files for 2 workloads and 3 records, as `db export` writes them."""
    tmp = tmp_path_factory.mktemp("exported")
    src = _filled(tmp, "src.db", "r", [3e-6, 1e-6, 2e-6])
    with open_database(src, readonly=True) as store:
        store.export_json(tmp / "export")
    return tmp / "export"


def _edited(exported, tmp_path, file, line):
    """A copy of the export with `line` appended to one of its files."""
    out = tmp_path / "edited"
    shutil.copytree(exported, out)
    with open(out / file, "a") as f:
        f.write(line + "\n")
    return out


def _workload_ir(nested_ir: str) -> str:
    import base64
    import struct

    raw = nested_ir.encode()
    return base64.b64encode(struct.pack("<Q", len(raw)) + raw).decode()


# --- J03, J04, J11: lines nested too deep for TVM's (and Python's) parsers ---------------------


@pytest.mark.parametrize("file, line, where", [
    ("database_tuning_record.json", "[0," + "[" * DEEP + "]" * DEEP + "]",
     "database_tuning_record.json:4"),
    ("database_workload.json", "[" * DEEP + "]" * DEEP, "database_workload.json:3"),
    ("database_workload.json", json.dumps(["1", _workload_ir(
        '{"root_index": 0, "nodes": [' + "[" * DEEP + "]" * DEEP + ']}')]),
     "database_workload.json:3"),
    ("tvmopt_tactic_records.json", "[" * DEEP + "]" * DEEP, "tvmopt_tactic_records.json:1"),
], ids=["record (J03)", "workload (J04)", "workload IR in base64", "tactic record (J11)"])
def test_import_refuses_a_line_nested_too_deep(exported, tmp_path, invoke, file, line, where):
    edited = _edited(exported, tmp_path, file, line)
    db = _filled(tmp_path, "team.db", "team", [5e-6])
    result = invoke("db", "import", edited, "--db", db)
    assert result.exit_code == 1
    assert_one_line_error(result, where, "levels deep")
    assert len(result.output.splitlines()) == 1, result.output
    assert _counts(db) == (1, 0, "ok")  # nothing imported, nothing lost
    assert "3 records added" in invoke("db", "import", exported, "--db", db).output  # intact ones


# --- J08: numbers TVM's tokenizer cannot hold --------------------------------------------------


@pytest.mark.parametrize("latency", ["1e999", "1e-999"])
def test_import_refuses_an_out_of_range_latency_in_one_line(exported, tmp_path, latency):
    """In a subprocess: TVM logs its C++ complaint to the process's stderr, which an in-process
    CLI runner would not see."""
    first = (exported / "database_tuning_record.json").read_text().splitlines()[0]
    record = json.loads(first)
    text = json.dumps(record).replace(json.dumps(record[1][1]), f"[{latency}]")
    assert latency in text
    edited = _edited(exported, tmp_path, "database_tuning_record.json", text)
    db = empty_database(tmp_path / "imp.db")
    proc = subprocess.run([sys.executable, "-m", "tvmopt", "db", "import", str(edited), "--db",
                           str(db)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr  # one line, no C++ log
    assert proc.stderr.startswith("Error: ") and "database_tuning_record.json:4" in proc.stderr
    assert f"the number {latency} is out of range" in proc.stderr
    assert _counts(db) == (0, 0, "ok")


# --- M03, M04, M05: merging a damaged file, or one that is not a tvmopt database ---------------


def test_merge_skips_orphan_and_damaged_rows_and_says_how_many(tmp_path, invoke):
    src = _filled(tmp_path, "src.db", "r", [3e-6, 1e-6, 2e-6])
    with sqlite3.connect(src) as conn:
        conn.execute("INSERT INTO failures (workload_id, target_sha256, target_key, trace_sha256, "
                     "created_at) VALUES (999, 'x', 'k', 't', '2026')")  # M03
        conn.execute("UPDATE records SET workload_id = 777 WHERE mean_sec = 1e-6")  # M04
        conn.execute("UPDATE records SET trace_json = ? WHERE mean_sec = 2e-6",
                     ["[" * DEEP + "]" * DEEP])  # would crash the build that reads it
    dst = _filled(tmp_path, "dst.db", "d", [9e-6])
    result = invoke("db", "merge", src, "--db", dst)
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"merged {src}: ") and "1 records" in line
    assert "skipped 2 rows naming a workload the file does not hold" in line
    assert "1 incomplete or unreadable rows" in line
    with open_database(dst, readonly=True) as store:
        assert sorted(r["mean_sec"] for r in store.db["records"].rows) == pytest.approx(
            [3e-6, 9e-6])
    again = invoke("db", "merge", src, "--db", dst).output
    assert "0 workloads, 0 runs, 0 records, 0 failures, 0 tactic records added" in again


def test_merge_names_the_source_when_it_is_not_a_tvmopt_database(tmp_path, invoke):
    other = tmp_path / "notvmopt.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    dst = _filled(tmp_path, "m1.db", "d", [9e-6])
    result = invoke("db", "merge", other, "--db", dst)
    assert_one_line_error(result, "notvmopt.db", "not a tvmopt tuning database",
                          "the database to merge")
    assert "--db" not in result.output
    assert_one_line_error(invoke("db", "merge", tmp_path / "missing.db", "--db", dst),
                          "no such file", "the database to merge")
    assert _counts(dst) == (1, 0, "ok")


# --- LK03, DF05: the database locked by another writer, or its disk full, mid-tune -------------

# The CLI with a short busy timeout and lock wait, and (FULL_AT > 0) a database whose file cannot
# grow from that round commit on, as on a full disk (SQLite's max_page_count on the tune's
# connection: SQLITE_FULL, "database or disk is full").
DRIVER = """
import sys
import tvmopt.database.schema as schema, tvmopt.tuning.control as control
import tvmopt.tuning.tuner as tuner
schema.BUSY_TIMEOUT_S, control.LOCK_WAIT_S = float(sys.argv.pop(1)), float(sys.argv.pop(1))
full_at, commit, calls = int(sys.argv.pop(1)), tuner.Tuner._commit, []
def _commit(self, *args):
    calls.append(1)
    if len(calls) == full_at:
        pages = self.store.conn.execute("PRAGMA page_count").fetchone()[0]
        self.store.conn.execute(f"PRAGMA max_page_count = {pages}")
    return commit(self, *args)
tuner.Tuner._commit = _commit
from tvmopt.cli import main
main()
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return models.tiny_conv(tmp_path_factory.mktemp("faults") / "tiny_conv.onnx")


def _tune(tiny, db, *, busy_s, lock_wait_s, full_at, trials, batch):
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(busy_s), str(lock_wait_s), str(full_at), "tune",
         str(tiny), "--target", "host", "--trials", str(trials), "--batch-size", str(batch),
         "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_tune_waits_for_a_locked_database_then_stops_with_resume(tiny, tmp_path):
    """Another writer (a long `db merge`) holds the write lock: the round waits in memory and is
    stored once the lock is free; held past the limit, the tune stops with one line and the
    command that resumes, everything stored before kept."""
    db = tmp_path / "lockt.db"
    proc = _tune(tiny, db, busy_s=0.3, lock_wait_s=4, full_at=0, trials=5, batch=2)
    other = sqlite3.connect(db, timeout=60, isolation_level=None, check_same_thread=False)
    lines, waits, stored = [], 0, False
    watchdog = threading.Timer(600, proc.kill)  # a hung tune fails the test, not the whole CI
    watchdog.start()
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("tasks ") and not other.in_transaction and waits < 2:
                other.execute("BEGIN IMMEDIATE")  # after the baseline, and after round one
            elif "is locked by another process: keeping this round's 2 results" in line:
                waits += 1
                if waits == 1:  # the first time, let the round through
                    other.execute("ROLLBACK")
            elif "the round is stored, after" in line:
                stored = True
        proc.wait(timeout=60)
        assert other.in_transaction, "".join(lines)
    finally:
        watchdog.cancel()
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        proc.kill()
    err = "".join(lines)
    assert proc.returncode == 1, err
    assert stored and waits == 2, err
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert f"database {db} is locked by another process" in errors[0]
    assert "this round's 2 results were not stored, every round before it was" in errors[0]
    assert f"resume with: tvmopt tune {tiny} --target host --trials 5" in errors[0]
    records_, failures, integrity = _counts(db)
    assert records_ + failures == 3 and integrity == "ok"  # the baseline and round one


def test_a_full_disk_mid_tune_is_one_line_with_resume(tiny, tmp_path):
    db = tmp_path / "full.db"
    proc = _tune(tiny, db, busy_s=60, lock_wait_s=600, full_at=2, trials=5, batch=4)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert f"database {db}: the disk is full" in errors[0]
    assert "this round's 4 results were not stored, every round before it was" in errors[0]
    assert f"then resume with: tvmopt tune {tiny} --target host --trials 5" in errors[0]
    assert _counts(db) == (1, 0, "ok")  # the baseline, committed before the disk filled
    with open_database(db) as store:  # and the file takes writes again once there is room
        _add(store, 0, 1e-6)
    assert _counts(db)[0] == 2


def _add(store, i: int, sec: float) -> None:
    """A record straight into the store (MetaSchedule's FFI would turn its errors into
    RuntimeErrors), as the tuner commits a round."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmopt.database.metaschedule import record_to_json

    record = records.record(records.workload(i % 2), [sec], records.X86, split=2 ** (i % 4))
    store.add_record(store.add_workload(record.workload.mod), tvm.target.Target(records.X86),
                     record_to_json(record), device="test")
    assert isinstance(record, ms.database.TuningRecord)


def test_a_write_on_a_full_disk_is_one_line_and_rolled_back(tmp_path):
    path = _filled(tmp_path, "f.db", "r", [1e-6])
    with open_database(path) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(TvmoptError, match="the disk is full.*nothing of this change was "
                                              "written: free space"):
            with store.write():
                for i in range(200):
                    _add(store, i, 2e-6 + i * 1e-7)
    assert _counts(path) == (1, 0, "ok")


# --- TU05: an --rpc-tracker address where something else, or nothing, answers ------------------


class _FakeServer:
    """A TCP server on 127.0.0.1 that accepts and then answers garbage, closes, or stays silent."""

    def __init__(self, mode: str):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.mode, self.conns = mode, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.close()
            elif self.mode == "close":
                conn.close()
            else:
                self.conns.append(conn)  # silent: keeps it open, says nothing

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("mode, fragment", [
    ("garbage", "not a TVM RPC tracker (it answered with something else)"),
    ("close", "not a TVM RPC tracker"),
    ("silent", "accepted the connection but did not answer within 1 s"),
])
def test_a_server_that_is_not_an_rpc_tracker_is_one_line(mode, fragment):
    from tvmopt.tuning.measure import check_tracker

    server = _FakeServer(mode)
    try:
        start = time.monotonic()
        with pytest.raises(TvmoptError) as e:
            check_tracker(f"127.0.0.1:{server.port}", "h100", timeout_s=1.0)
        assert time.monotonic() - start < 5
    finally:
        server.close()
    message = str(e.value)
    assert fragment in message and "\n" not in message
    assert f"RPC tracker 127.0.0.1:{server.port}" in message and "fix --rpc-tracker" in message


def test_tune_with_a_tracker_address_that_answers_garbage(tiny, tmp_path, invoke):
    server = _FakeServer("garbage")
    try:
        result = invoke("tune", tiny, "--target", "host", "--trials", "8", "--rpc-tracker",
                        f"127.0.0.1:{server.port}", "--rpc-key", "h100", "--db", tmp_path / "tu.db")
    finally:
        server.close()
    assert result.exit_code == 1
    assert_one_line_error(result, f"RPC tracker 127.0.0.1:{server.port}",
                          "not a TVM RPC tracker", "python -m tvm.exec.rpc_tracker")


# --- DF06: `db export` onto a full disk --------------------------------------------------------


def _no_partials(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tvmopt-" in p.name)


def test_export_cut_short_fails_and_leaves_no_output(tmp_path, invoke, monkeypatch):
    """TVM's JSONDatabase ignores write errors: here its records file ends mid-line, as on a disk
    that filled while it wrote."""
    from tvm.s_tir import meta_schedule as ms

    real = ms.database.JSONDatabase

    class ShortWrites:
        def __init__(self, workload_path, record_path, **kwargs):
            self.db, self.record_path = real(workload_path, record_path, **kwargs), record_path

        def commit_workload(self, mod):
            return self.db.commit_workload(mod)

        def commit_tuning_record(self, record):
            self.db.commit_tuning_record(record)
            text = open(self.record_path).read()
            with open(self.record_path, "w") as f:  # the last line loses its second half
                f.write(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])

    monkeypatch.setattr(ms.database, "JSONDatabase", ShortWrites)
    src = _filled(tmp_path, "src.db", "r", [3e-6, 1e-6, 2e-6])
    out = tmp_path / "exp"
    result = invoke("db", "export", "-o", out, "--db", src)
    assert_one_line_error(result, f"cannot write {out}", "no space left on device")
    assert not out.exists() and _no_partials(tmp_path) == []


def test_export_onto_a_full_tmpfs_fails_and_leaves_no_output(tmp_path):
    """The real thing, where this user may mount (root, in a private mount namespace)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or subprocess.run(
            [unshare, "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
            capture_output=True).returncode != 0:
        pytest.skip("needs root and mount namespaces (unshare -m) to mount a small tmpfs")
    src = _filled(tmp_path, "src.db", "r", [3e-6, 1e-6, 2e-6])
    small = tmp_path / "small"
    small.mkdir()
    # 256 KiB, all but 8 KiB taken: the workloads file (some 30 KB) does not fit.
    script = (f"mount -t tmpfs -o size=256k tmpfs {small} && "
              f"{sys.executable} -c \"import os; s = os.statvfs('{small}'); "
              f"open('{small}/filler', 'wb').write(b'x' * (s.f_bavail * s.f_frsize - 8192))\" && "
              f"{sys.executable} -m tvmopt db export --db {src} -o {small}/exp; rc=$?; "
              f"ls -A {small}; exit $rc")
    proc = subprocess.run([unshare, "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("Error:") == 1 and "no space left on device" in proc.stderr, \
        proc.stderr
    assert "internal error" not in proc.stderr
    assert proc.stdout.split() == ["filler"]  # no exp, no partial directory
