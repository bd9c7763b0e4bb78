"""The team's tuning database, one SQLite file shared by every tune and build.

Upstream's JSONDatabase ignores the target on lookup (apache/tvm #15549), appends every failed
candidate and has no locking. Here:
- workloads are identified by a hash of their printed TIR, which is stable across platforms
  (the structural hash is kept too, as TVM's JSON export needs it, but it is not, #14188);
- records are looked up only for the exact target (host excluded) they were measured on;
- failed candidates are one small row each (trace hash), never returned as a best record;
- the file runs in WAL mode with a busy timeout and short `BEGIN IMMEDIATE` write transactions,
  so many processes on one host can tune into it at once. WAL needs shared memory: do not put the
  file on a network filesystem; merge files across hosts instead (`merge`);
- commands that only read open the file read-only and never create it.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import logging
import math
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from ..errors import TvmoptError, first_line
from .identity import canonical_json, record_identity, sha256, target_identity, workload_identity
from .jsonlines import check_tvm_files
from .schema import (BUSY_TIMEOUT_S, applied_migrations, check_file, check_writable, connect,
                     known_migrations, migrations, now, unavailable)
from .tactic_records import EXPORT_FILE as TACTICS_FILE
from .tactic_records import TacticRecords

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("tuning_logs") / "tvmopt.db"
# MetaSchedule reports a failed build or run as a huge latency.
FAILED_RUN_SEC = 1e9


def default_path() -> tuple[Path, bool]:
    """(the database a command uses without --db, whether the user chose it with TVMOPT_DB)."""
    chosen = os.environ.get("TVMOPT_DB")
    return (Path(chosen), True) if chosen else (DEFAULT_PATH, False)


def open_database(path: str | Path | None = None, *, readonly: bool = False,
                  argument: str = "--db") -> TuningStore:
    """Open the tuning database at `path` (or TVMOPT_DB, or the default), migrated to this schema.

    Writers create a missing file. Readers never do: a missing file the user named is an error,
    and a missing default database is an empty one ("no records yet"), held in memory.
    `argument` is how the user named the file, for messages ("the database to merge").
    """
    path, chose = (Path(path), True) if path is not None else default_path()
    if path.exists():
        check_file(path, argument)
        applied = applied_migrations(path, argument)
    elif readonly and chose and argument != "--db":
        raise TvmoptError(f"database {path}: no such file; check the path of {argument}")
    elif readonly and chose:
        raise TvmoptError(f"database {path}: no such file; check --db / TVMOPT_DB, or run "
                          "`tvmopt tune` to create it")
    elif readonly:
        log.info("no tuning database at %s yet: no tuned records (`tvmopt tune` creates it)", path)
        return _empty_store(path)
    else:
        applied = []
        path.parent.mkdir(parents=True, exist_ok=True)
    if readonly:
        if not applied:  # a zero-byte (or table-less) file: SQLite's empty database
            return _empty_store(path)
        return TuningStore(path, connect(path, readonly=True))
    try:
        conn = connect(path, readonly=False)
    except sqlite3.OperationalError as e:
        raise TvmoptError(f"database {path}: cannot be created or opened for writing ({e}); "
                          "pass --db with a path in a directory you can write to") from None
    try:
        check_writable(conn, path)
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        store = TuningStore(path, conn)
        if len(applied) < len(known_migrations()):
            with store.write():
                migrations.apply(store.db)
    except TvmoptError:
        conn.close()
        raise
    except sqlite3.DatabaseError as e:
        conn.close()
        raise TvmoptError(f"database {path}: cannot be opened for writing ({e})") from None
    return store


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a file to WAL mode (once in its life; the mode is stored in the file).

    Switching needs the file to itself and SQLite answers "database is locked" at once rather than
    waiting, so writers that create a file together wait here for the one that switches it.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _empty_store(path: Path) -> TuningStore:
    """A database with this schema and no rows, in memory: what a missing default file holds."""
    store = TuningStore(path, sqlite3.connect(":memory:", isolation_level=None,
                                              check_same_thread=False), exists=False)
    migrations.apply(store.db)
    return store


@dataclass
class TuningHistory:
    workloads: list[dict]  # ir_sha256, name, weight (None when no run recorded it)
    trials: list[tuple[str, float | None]]


@dataclass(frozen=True)
class StoredRecord:
    workload_id: int
    target_key: str
    mean_sec: float
    run_secs: list[float]
    trace_json: str
    target_json: str
    args_info_json: str | None
    device: str | None


class TuningStore(TacticRecords):
    """The SQLite file, through plain methods; `for_target` gives MetaSchedule's view of it."""

    def __init__(self, path: Path, conn: sqlite3.Connection, *, exists: bool = True):
        self.path = path
        self.exists = exists  # False: no file at `path` yet, the store is empty and in memory
        self.conn = conn
        self.db = sqlite_utils.Database(conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> TuningStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self):
        """A short write transaction that takes the write lock up front.

        A deferred transaction that upgrades from read to write can fail with SQLITE_BUSY without
        waiting; IMMEDIATE waits for the lock (busy timeout) instead. Nested, it joins the
        transaction around it (e.g. a tuning round's records commit together).
        """
        if self.conn.in_transaction:
            yield
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:  # locked past the busy timeout
            raise unavailable(self.path, e) from None
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:  # SQLite has rolled back already on a full disk
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):
                raise unavailable(self.path, e) from None
            raise

    # --- workloads -------------------------------------------------------------------------

    def find_workload(self, mod) -> int | None:
        row = self.conn.execute(
            "SELECT id FROM workloads WHERE ir_sha256 = ?", [workload_identity(mod)]
        ).fetchone()
        return row[0] if row else None

    def add_workload(self, mod, name: str | None = None) -> int:
        import tvm
        import tvm_ffi

        ir_sha = workload_identity(mod)
        row = self.conn.execute("SELECT id, name FROM workloads WHERE ir_sha256 = ?",
                                [ir_sha]).fetchone()
        if row:
            if name and not row[1]:  # MetaSchedule commits workloads without a task name
                with self.write():
                    self.conn.execute("UPDATE workloads SET name = ? WHERE id = ?", [name, row[0]])
            return row[0]
        with self.write():
            self.conn.execute(
                "INSERT OR IGNORE INTO workloads (ir_sha256, shash, name, ir_json, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [ir_sha, str(tvm_ffi.structural_hash(mod)), name, tvm.ir.save_json(mod), now()],
            )
        return self.conn.execute(
            "SELECT id FROM workloads WHERE ir_sha256 = ?", [ir_sha]).fetchone()[0]

    def load_workload_mod(self, workload_id: int):
        import tvm

        row = self.conn.execute("SELECT ir_json FROM workloads WHERE id = ?", [workload_id]).fetchone()
        return tvm.ir.load_json(row[0])

    # --- records ---------------------------------------------------------------------------

    def add_record(self, workload_id: int, target, record_json: list, *, device: str | None,
                   run_uid: str | None = None, tvm_version: str | None = None) -> str:
        """Store one measured candidate: "added", "duplicate", "failure" (kept as a hash), or
        "invalid" (a latency of zero or less, which no measurement gives: never stored)."""
        import tvm

        trace, run_secs, _target, args_info = record_json
        run_secs = [float(s) for s in (run_secs or [])]
        if any(s <= 0 for s in run_secs):
            return "invalid"
        tsha, tkey, tjson = target_identity(target)
        trace_json = canonical_json(trace)
        created = now()
        if not run_secs or any(not math.isfinite(s) or s >= FAILED_RUN_SEC for s in run_secs):
            with self.write():
                self.conn.execute(
                    "INSERT OR IGNORE INTO failures (workload_id, target_sha256, target_key, "
                    "trace_sha256, run_uid, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [workload_id, tsha, tkey, sha256(trace_json), run_uid, created],
                )
            return "failure"
        values = {
            "workload_id": workload_id, "target_sha256": tsha, "target_key": tkey,
            "target_json": tjson, "trace_json": trace_json,
            "run_secs_json": json.dumps(run_secs), "mean_sec": sum(run_secs) / len(run_secs),
            "args_info_json": canonical_json(args_info) if args_info is not None else None,
            "device": device, "tvm_version": tvm_version or tvm.__version__,
            "run_uid": run_uid, "created_at": created,
        }
        with self.write():
            new = self._insert_record(values, self._workload_sha(workload_id))
        return "added" if new else "duplicate"

    def _workload_sha(self, workload_id: int) -> str:
        return self.conn.execute(
            "SELECT ir_sha256 FROM workloads WHERE id = ?", [workload_id]).fetchone()[0]

    def _insert_record(self, values: dict, workload_sha: str) -> bool:
        """Insert unless the same measurement is there already (whatever route it came by)."""
        uid = record_identity(workload_sha, values["target_sha256"], values["trace_json"],
                              values["run_secs_json"])
        cols = ["uid", *values]
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO records ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})",
            [uid, *values.values()],
        )
        if cur.rowcount == 0 and values["device"] is not None:
            # Known already, perhaps through an import that lost who measured it: keep the
            # provenance that says more.
            self.conn.execute("UPDATE records SET device = ?, run_uid = ? WHERE uid = ? AND "
                              "device IS NULL", [values["device"], values["run_uid"], uid])
        return cur.rowcount == 1

    def best_records(self, workload_id: int, target_sha256: str, k: int) -> list[StoredRecord]:
        rows = self.conn.execute(
            "SELECT workload_id, target_key, mean_sec, run_secs_json, trace_json, target_json, "
            "args_info_json, device FROM records WHERE workload_id = ? AND target_sha256 = ? "
            "ORDER BY mean_sec LIMIT ?",
            [workload_id, target_sha256, k],
        ).fetchall()
        return [StoredRecord(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def count_trials(self, workload_id: int, target_sha256: str) -> int:
        """Candidates measured for a workload on a target, failures included."""
        return sum(self.conn.execute(
            f"SELECT count(*) FROM {table} WHERE workload_id = ? AND target_sha256 = ?",
            [workload_id, target_sha256]).fetchone()[0] for table in ("records", "failures"))

    def measured_sec(self, workload_id: int, target_sha256: str, trace_json: str) -> float | None:
        """The best mean latency measured for this schedule (a trace, as `canonical_json` spells
        it) of the workload on the target, or None."""
        return self.conn.execute(
            "SELECT min(mean_sec) FROM records WHERE workload_id = ? AND target_sha256 = ? AND "
            "trace_json = ?", [workload_id, target_sha256, trace_json]).fetchone()[0]

    def has_measured(self, workload_id: int, target_sha256: str, trace_json: str) -> bool:
        """Whether this schedule (a trace, as `canonical_json` spells it) was measured for the
        workload on the target, successfully or not."""
        return self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM records WHERE workload_id = ? AND target_sha256 = ? AND "
            "trace_json = ?) OR EXISTS (SELECT 1 FROM failures WHERE workload_id = ? AND "
            "target_sha256 = ? AND trace_sha256 = ?)",
            [workload_id, target_sha256, trace_json, workload_id, target_sha256,
             sha256(trace_json)]).fetchone()[0] == 1

    def count_records(self, target_sha256: str | None = None) -> int:
        if target_sha256 is None:
            return self.conn.execute("SELECT count(*) FROM records").fetchone()[0]
        return self.conn.execute(
            "SELECT count(*) FROM records WHERE target_sha256 = ?", [target_sha256]).fetchone()[0]

    def workload_ids_for_target(self, target_sha256: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT workload_id FROM records WHERE target_sha256 = ?", [target_sha256])]

    # --- runs ------------------------------------------------------------------------------

    def begin_run(self, *, model_sha256: str | None, command: str, target_key: str) -> str:
        uid = uuid.uuid4().hex
        with self.write():
            self.conn.execute(
                "INSERT INTO runs (uid, host, user, model_sha256, command, target_key, trials, "
                "started_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                [uid, socket.gethostname(), _user(), model_sha256, command, target_key, now()],
            )
        return uid

    def set_run_tasks(self, uid: str, tasks) -> None:
        """Record the tasks (objects with .mod, .name, .weight) that a tune run is working on."""
        rows = [[uid, workload_identity(t.mod), t.name, t.weight] for t in tasks]
        with self.write():
            self.conn.executemany("INSERT OR REPLACE INTO run_tasks (run_uid, ir_sha256, task, weight) "
                                  "VALUES (?, ?, ?, ?)", rows)

    def has_table(self, name: str) -> bool:
        """Read-only opens do not migrate: a file from before a migration lacks its tables."""
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 [name]).fetchone() is not None

    def tuning_history(self, target_key: str) -> TuningHistory:
        """The latest tune run's model for one target: its tasks (name, weight) and every trial of
        them in the order measured, as (ir_sha256, seconds or None if it failed). Without run
        records (files from before schema m002), every workload with records for the target."""
        run = None
        names = dict(self.conn.execute("SELECT ir_sha256, name FROM workloads").fetchall())
        weights: dict[str, int] = {}
        if self.has_table("run_tasks"):
            run = self.conn.execute(
                "SELECT r.uid FROM runs r WHERE r.target_key = ? AND EXISTS "
                "(SELECT 1 FROM run_tasks rt WHERE rt.run_uid = r.uid) ORDER BY r.started_at DESC "
                "LIMIT 1", [target_key]).fetchone()
        if run is not None:
            for sha, task, weight in self.conn.execute(
                    "SELECT ir_sha256, task, weight FROM run_tasks WHERE run_uid = ?", [run[0]]):
                names[sha], weights[sha] = names.get(sha) or task, weight
        trials = [(sha, sec) for sha, sec in self.conn.execute(
            "SELECT w.ir_sha256, t.sec FROM ("
            "  SELECT workload_id, mean_sec AS sec, created_at, 0 AS failed, id FROM records"
            "  WHERE target_key = ?"
            "  UNION ALL SELECT workload_id, NULL, created_at, 1, id FROM failures"
            "  WHERE target_key = ?) t JOIN workloads w ON w.id = t.workload_id "
            "ORDER BY t.created_at, t.failed, t.id", [target_key, target_key])
            if run is None or sha in weights]
        seen = list(dict.fromkeys(sha for sha, _ in trials))
        return TuningHistory(
            [{"ir_sha256": sha, "name": names.get(sha) or sha[:12], "weight": weights.get(sha)}
             for sha in seen],
            [(sha, sec if sec is None or sec < FAILED_RUN_SEC else None) for sha, sec in trials])

    def end_run(self, uid: str, trials: int, *, at_once: bool = False) -> None:
        """Mark a run ended; `at_once` after a write failed (locked, disk full): not waiting for
        the lock again, and without raising."""
        if at_once:
            self.end_run_abruptly(uid)
            return
        with self.write():
            self.conn.execute("UPDATE runs SET trials = ?, ended_at = ? WHERE uid = ?",
                              [trials, now(), uid])

    def end_run_abruptly(self, uid: str) -> bool:
        """Mark a run ended, counting its stored trials, from a process about to exit mid-write
        (a signal handler): through a connection of its own that waits at most a second, since
        the interrupted code may hold the write lock. False if it could not."""
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=1.0)) as conn, conn:
                conn.execute(
                    "UPDATE runs SET ended_at = ?, trials = (SELECT count(*) FROM records WHERE "
                    "run_uid = ?) + (SELECT count(*) FROM failures WHERE run_uid = ?) WHERE uid = ?",
                    [now(), uid, uid, uid])
            return True
        except sqlite3.Error:
            return False

    # --- team operations ---------------------------------------------------------------------

    def stats(self) -> list[dict]:
        """Per target: workloads, records, failures, each workload's best latency, and the
        tactic records with each layer's best tactic."""
        out = []
        targets = self.conn.execute(
            "SELECT target_sha256, target_key, count(DISTINCT workload_id), count(*) "
            "FROM records GROUP BY target_sha256 ORDER BY target_key").fetchall()
        for tsha, tkey, n_workloads, n_records in targets:
            best = self.conn.execute(
                "SELECT w.id, w.name, w.ir_sha256, min(r.mean_sec), count(*) FROM records r "
                "JOIN workloads w ON w.id = r.workload_id WHERE r.target_sha256 = ? "
                "GROUP BY w.id ORDER BY w.id", [tsha]).fetchall()
            failures = self.conn.execute(
                "SELECT count(*) FROM failures WHERE target_sha256 = ?", [tsha]).fetchone()[0]
            out.append({
                "target_key": tkey, "target_sha256": tsha, "workloads": n_workloads,
                "records": n_records, "failures": failures,
                "best": [{"workload_id": r[0], "name": r[1], "ir_sha256": r[2],
                          "best_sec": r[3], "records": r[4]} for r in best],
                **self.tactic_stats(tsha),
            })
        return out

    def find_workloads(self, query: str) -> list[dict]:
        """Workloads matching an id, a prefix of the IR hash, or a task name."""
        rows = self.conn.execute(
            "SELECT id, name, ir_sha256, shash, created_at FROM workloads WHERE CAST(id AS TEXT) = ? "
            "OR ir_sha256 LIKE ? OR name = ? ORDER BY id", [query, f"{query}%", query]).fetchall()
        by_id = [r for r in rows if str(r[0]) == query]  # "12" is an id, whatever hashes begin so
        rows = by_id or rows
        return [dict(zip(("id", "name", "ir_sha256", "shash", "created_at"), r)) for r in rows]

    def workload_records(self, workload_id: int, limit: int = 5) -> list[dict]:
        rows = self.conn.execute(
            "SELECT target_key, mean_sec, device, tvm_version, run_uid, created_at FROM ("
            "  SELECT *, row_number() OVER (PARTITION BY target_sha256 ORDER BY mean_sec) AS rank "
            "  FROM records WHERE workload_id = ?) WHERE rank <= ? ORDER BY target_key, mean_sec",
            [workload_id, limit]).fetchall()
        return [dict(zip(("target_key", "mean_sec", "device", "tvm_version", "run_uid",
                          "created_at"), r)) for r in rows]

    def merge_from(self, other_path: str | Path):
        """Copy another tvmopt database's rows into this one (see `merge`): a MergeCounts of the
        rows added per table, and of those skipped (`.skipped`, `.summary()`)."""
        from .merge import merge

        other_path = Path(other_path)
        if other_path.resolve() == self.path.resolve():
            raise TvmoptError(f"cannot merge {other_path} into itself")
        with open_database(other_path, readonly=True, argument="the database to merge") as other:
            return merge(self, other)

    def prune(self, keep: int) -> tuple[int, int]:
        """Keep the best `keep` records per workload and target, and the best `keep` tactics per
        layer and target; returns how many records and tactic records were deleted."""
        if keep < 1:
            raise TvmoptError("--keep must be at least 1")
        with self.write():
            records = self.conn.execute(
                "DELETE FROM records WHERE id IN (SELECT id FROM ("
                "  SELECT id, row_number() OVER (PARTITION BY workload_id, target_sha256 "
                "  ORDER BY mean_sec, id) AS rank FROM records) WHERE rank > ?)", [keep]).rowcount
            return records, self._prune_tactics(keep)

    def export_json(self, directory: str | Path) -> tuple[int, int, int]:
        """Write TVM's own JSONDatabase files, usable by plain MetaSchedule (all targets), and the
        tactic records beside them; returns (workloads, records, tactic records)."""
        from tvm.s_tir import meta_schedule as ms

        from .metaschedule import parse_record

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / "database_workload.json", directory / "database_tuning_record.json"]
        existing = [p for p in (*paths, directory / TACTICS_FILE) if p.exists()]
        if existing:
            raise TvmoptError(f"{existing[0]} exists; export into an empty directory")
        json_db = ms.database.JSONDatabase(*map(str, paths), allow_missing=True)
        n_workloads = n_records = 0
        for (workload_id,) in self.conn.execute("SELECT id FROM workloads ORDER BY id").fetchall():
            mod = self.load_workload_mod(workload_id)
            workload = json_db.commit_workload(mod)
            n_workloads += 1
            for row in self.conn.execute(
                    "SELECT trace_json, run_secs_json, target_json, args_info_json FROM records "
                    "WHERE workload_id = ? ORDER BY target_sha256, mean_sec", [workload_id]).fetchall():
                json_db.commit_tuning_record(
                    parse_record(row[0], json.loads(row[1]), row[2], row[3], workload))
                n_records += 1
        del json_db  # TVM's writer does not check its stream: count what reached the files
        for path, expected in zip(paths, (n_workloads, n_records)):
            _check_written_lines(path, expected)
        return n_workloads, n_records, self._export_tactics(directory)

    def import_json(self, directory: str | Path) -> dict[str, int]:
        """Read a TVM JSONDatabase directory; re-importing the same files adds nothing."""
        from .metaschedule import read_json_database, record_to_json

        directory = Path(directory)
        paths = [directory / "database_workload.json", directory / "database_tuning_record.json"]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise TvmoptError(f"{missing[0]}: no such file; pass a directory holding TVM's "
                              "database_workload.json and database_tuning_record.json")
        check_tvm_files(*paths)  # TVM's parser crashes on deep nesting, logs on bad numbers
        try:
            records = read_json_database(*paths)
        except Exception as e:  # TVM's parser raises assorted types for malformed lines
            raise TvmoptError(f"{directory}: TVM cannot read these database files "
                              f"({first_line(e, 200)})") from None
        source = "import:" + sha256("".join(sha256(p.read_text()) for p in paths))[:16]
        counts = {"added": 0, "duplicate": 0, "failure": 0, "invalid": 0, "no_target": 0,
                  **self._import_tactics(directory)}
        for record in records:
            if record.target is None:  # a record must say what it was measured on
                counts["no_target"] += 1
                continue
            workload_id = self.add_workload(record.workload.mod)
            counts[self.add_record(workload_id, record.target, record_to_json(record),
                                   device=None, run_uid=source)] += 1
        return counts

    def for_target(self, target, *, device: str | None = None, run_uid: str | None = None):
        """MetaSchedule's Database interface, scoped to one target."""
        from .metaschedule import TargetDatabase

        return TargetDatabase(self, target, device=device, run_uid=run_uid)

    def digest(self) -> str:
        """Identifies the database contents a build used (changes when records are added)."""
        row = self.conn.execute("SELECT count(*), max(id) FROM records").fetchone()
        return sha256(f"{self.path.resolve()}:{row[0]}:{row[1]}")[:16]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


EXPORT_FILES = ("database_workload.json", "database_tuning_record.json", TACTICS_FILE)


def is_export(directory: Path) -> bool:
    """A directory `db export` wrote (only its files), which a new export may replace."""
    names = {p.name for p in directory.iterdir()}
    return names <= set(EXPORT_FILES) and not any(
        (directory / n).is_symlink() or not (directory / n).is_file() for n in names)


def _check_written_lines(path: Path, expected: int) -> None:
    """A JSON-lines file holds `expected` whole lines (TVM's JSONDatabase ignores write errors,
    so a full disk would otherwise leave a file cut mid-line)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    try:
        for line in lines:
            json.loads(line)
    except ValueError:
        lines = []
    if len(lines) != expected:
        raise OSError(errno.ENOSPC, f"{path.name} holds {len(lines)} of {expected} whole lines")

