"""The tuning database's schema: append-only migrations, and the checks an existing file passes
before tvmopt writes to it (a foreign, truncated, corrupt or newer file is refused untouched)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import sqlite3
import struct
import urllib.parse
from pathlib import Path

import sqlite_utils

from ..errors import TvmoptError
from .identity import record_identity

BUSY_TIMEOUT_S = 60.0

migrations = sqlite_utils.Migrations("tvmopt")


def now() -> str:
    """A row's created_at: UTC, to the millisecond."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class DatabaseUnavailable(TvmoptError):
    """A write SQLite refused for a reason outside tvmopt, after rolling it back (nothing of it is
    stored): another process held the write lock for the whole busy timeout (`locked`; a long
    merge, say), or the disk is full (not `locked`)."""

    waited_s = 0.0  # how long a tune waited for the lock before giving up (tuning.control)

    def __init__(self, path: Path, e: sqlite3.OperationalError, locked: bool):
        self.path, self.locked = Path(path), locked
        where = self.path.parent if str(self.path.parent) else Path(".")
        super().__init__(
            f"database {path} is locked by another process (a tune, merge, prune or import "
            f"writing to it) for over {BUSY_TIMEOUT_S:.0f} s; nothing of this change was "
            "written: run the command again when that one is done" if locked else
            f"database {path}: the disk is full ({e}); nothing of this change was written: free "
            f"space on {where} and run the command again")


def unavailable(path: Path, e: sqlite3.OperationalError) -> Exception:
    """`e` as a DatabaseUnavailable when it is a lock held too long or a full disk, else `e`."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(e):
        return DatabaseUnavailable(path, e, locked=True)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(e):
        return DatabaseUnavailable(path, e, locked=False)
    return e


def valid_run_secs(run_secs_json: str) -> bool:
    """Positive, finite latencies: what a measurement gives (an edited file may hold others)."""
    try:
        secs = json.loads(run_secs_json)
        return bool(secs) and all(isinstance(s, int | float) and math.isfinite(s) and 0 < s
                                  for s in secs)
    except (TypeError, ValueError, RecursionError):  # RecursionError: nested thousands deep
        return False


@migrations()
def m001_initial(db: sqlite_utils.Database):
    db.execute("""
        CREATE TABLE workloads (
            id INTEGER PRIMARY KEY,
            ir_sha256 TEXT NOT NULL UNIQUE,   -- hash of the printed TIR: stable across platforms
            shash TEXT NOT NULL,              -- TVM structural hash, as its JSON format wants
            name TEXT,                        -- task name when first seen, for people
            ir_json TEXT NOT NULL,            -- tvm.ir.save_json of the workload module
            created_at TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,         -- survives merges, unlike id
            host TEXT, user TEXT, model_sha256 TEXT, command TEXT,
            target_key TEXT, trials INTEGER,
            started_at TEXT NOT NULL, ended_at TEXT
        )""")
    db.execute("""
        CREATE TABLE records (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,         -- content hash: merging twice adds nothing
            workload_id INTEGER NOT NULL REFERENCES workloads(id),
            target_sha256 TEXT NOT NULL,      -- canonical target JSON without its host
            target_key TEXT NOT NULL,         -- readable: cuda/sm_90a, llvm/x86_64/znver4
            target_json TEXT NOT NULL,
            trace_json TEXT NOT NULL,
            run_secs_json TEXT NOT NULL,
            mean_sec REAL NOT NULL,
            args_info_json TEXT,
            device TEXT,
            tvm_version TEXT,
            run_uid TEXT,
            created_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX records_best ON records(workload_id, target_sha256, mean_sec)")
    db.execute("""
        CREATE TABLE failures (
            id INTEGER PRIMARY KEY,
            workload_id INTEGER NOT NULL REFERENCES workloads(id),
            target_sha256 TEXT NOT NULL,
            target_key TEXT NOT NULL,
            trace_sha256 TEXT NOT NULL,
            run_uid TEXT,
            created_at TEXT NOT NULL,
            UNIQUE(workload_id, target_sha256, trace_sha256)
        )""")


@migrations()
def m002_run_tasks(db: sqlite_utils.Database):
    # The model's tasks and weights per tune run: what turns per-task bests into a model estimate.
    db.execute("""
        CREATE TABLE run_tasks (
            run_uid TEXT NOT NULL,
            ir_sha256 TEXT NOT NULL,          -- the workload, by its merge-stable key
            task TEXT,
            weight INTEGER NOT NULL,          -- calls per inference
            PRIMARY KEY (run_uid, ir_sha256)
        )""")


@migrations()
def m003_route_free_record_identity(db: sqlite_utils.Database):
    # A record's uid used to include its device and run, so one measurement that reached a file
    # by two routes (exported and imported, and merged as well) was stored twice. Recompute the
    # uids from the measurement alone and keep one row per measurement, the one that says who
    # measured it (else the first).
    rows = db.execute(
        "SELECT r.id, w.ir_sha256, r.target_sha256, r.trace_json, r.run_secs_json "
        "FROM records r JOIN workloads w ON w.id = r.workload_id "
        "ORDER BY r.device IS NULL, r.id").fetchall()
    kept: dict[str, int] = {}
    for record_id, *content in rows:
        uid = record_identity(*content)
        if uid in kept:
            db.execute("DELETE FROM records WHERE id = ?", [record_id])
        else:
            kept[uid] = record_id
    for uid, record_id in kept.items():
        db.execute("UPDATE records SET uid = ? WHERE id = ?", [uid, record_id])


@migrations()
def m004_tactic_records(db: sqlite_utils.Database):
    # A kernel library's tactics, measured per layer: what the build weighs against TIR records.
    db.execute("""
        CREATE TABLE tactic_records (
            id INTEGER PRIMARY KEY,
            uid TEXT NOT NULL UNIQUE,         -- content hash: merging twice adds nothing
            layer_key TEXT NOT NULL,          -- the layer's operation, epilogue and GEMM size
            provider TEXT NOT NULL,           -- the kernel library: cutlass
            tactic TEXT NOT NULL,             -- the instance's configuration, by name
            target_sha256 TEXT NOT NULL,
            target_key TEXT NOT NULL,
            target_json TEXT NOT NULL,
            run_secs_json TEXT,               -- NULL when the tactic failed
            mean_sec REAL,
            error TEXT,                       -- why it failed (cannot run the shape, wrong numbers)
            device TEXT,
            library_version TEXT,             -- the compiler and library that built the instance
            run_uid TEXT,
            created_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX tactic_records_best ON tactic_records(layer_key, target_sha256, "
               "mean_sec)")


@functools.cache
def known_migrations() -> tuple[str, ...]:
    """Every migration this tvmopt has, in order (all of them are pending on an empty database)."""
    return tuple(m.name for m in migrations.pending(sqlite_utils.Database(memory=True)))


def connect(path: Path | str, readonly: bool) -> sqlite3.Connection:
    """Autocommit (tvmopt opens its transactions itself), waiting on a busy lock."""
    if not readonly:
        return _connect(path, uri=False)
    # A read-only open never creates the file. Reading a WAL-mode file needs its -shm index, which
    # SQLite cannot create in a directory this user may not write to; a file with nothing in its
    # WAL is complete on its own and is then read as immutable.
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    conn = _connect(uri, uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        if "readonly" not in str(e) and "unable to open" not in str(e):
            raise
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size:
            raise TvmoptError(
                f"database {path}: {wal.name} holds changes not yet in the file and this user "
                f"cannot write to {Path(path).parent or '.'}; run any `tvmopt db` command there "
                "once as its owner, or copy the .db and its -wal file somewhere writable"
            ) from None
    return _connect(uri + "&immutable=1", uri=True)


def _connect(path: str | Path, uri: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def check_writable(conn: sqlite3.Connection, path: Path) -> None:
    """Fail now, not at the first record a tune commits, when the file or its directory is
    read-only for this user (SQLite then opens it read-only without saying so)."""
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"PRAGMA user_version = {int(version)}")  # a page write, rolled back
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "readonly" not in str(e):
            raise
        raise TvmoptError(
            f"database {path}: this user cannot write to it or to its directory ({e}); pass --db "
            "with a writable copy, and `tvmopt db merge` it into the shared file later"
        ) from None


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _pass(argument: str, what: str) -> str:
    """What to do, for the file the user named as `argument` ("--db", "the database to merge")."""
    return f"pass {argument} with {what}" if argument == "--db" else f"pass {what} as {argument}"


def check_file(path: Path, argument: str = "--db") -> None:
    """Reject files that are not intact SQLite databases, reading only (never writing) them."""
    if not path.is_file():
        raise TvmoptError(f"database {path}: is not a file; {_pass(argument, 'a .db file path')}")
    size = path.stat().st_size
    if size == 0:
        return  # an empty file is an empty SQLite database
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise TvmoptError(
            f"database {path}: not a SQLite file; pass --db with a tvmopt database, "
            "or a new path to create one" if argument == "--db" else
            f"database {path}: not a SQLite file; {_pass(argument, 'a tvmopt database')}"
        )
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter, page_count = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    if page_count and change_counter == valid_for and page_count * page_size > size:
        raise TvmoptError(
            f"database {path}: truncated ({size} of {page_count * page_size} bytes); "
            "restore it from a copy or merge the good files into a new one"
        )


def _not_tvmopt(path: Path, argument: str) -> TvmoptError:
    return TvmoptError(f"database {path}: a SQLite file, but not a tvmopt tuning database; "
                       f"{_pass(argument, 'another path')}")


def applied_migrations(path: Path, argument: str = "--db") -> list[str]:
    """Applied tvmopt migrations of an existing file; errors for foreign, newer or corrupt files."""
    try:
        with contextlib.closing(connect(path, readonly=True)) as conn:
            db = sqlite_utils.Database(conn)
            tables = set(db.table_names())
            if not tables:
                return []
            if migrations.migrations_table not in tables:
                raise _not_tvmopt(path, argument)
            applied = [m.name for m in migrations.applied(db)]
            if applied:
                conn.execute("SELECT count(*) FROM records").fetchone()
    except sqlite3.OperationalError as e:  # permissions, locks, I/O: the file may well be intact
        raise TvmoptError(f"database {path}: cannot be read ({e})") from None
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise TvmoptError(
            f"database {path}: unreadable ({e}); it is corrupt: restore it from a copy"
        ) from None
    newer = [name for name in applied if name not in known_migrations()]
    if newer:
        raise TvmoptError(
            f"database {path}: written by a newer tvmopt (schema {newer[-1]}); "
            "upgrade tvmopt to use it"
        )
    if not applied and tables - {migrations.migrations_table}:
        raise _not_tvmopt(path, argument)
    return applied
