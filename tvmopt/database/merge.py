"""`db merge`: another tvmopt database's rows copied into this one, in one transaction.

Everything is keyed by content (workload IR hash, record hash, run uid), so merging the same file
twice adds nothing, and provenance (device, run, time) travels with each record. A row the other
file cannot vouch for is left out and counted, never stored: a latency that is not a positive
number (an edited file), a record or failure naming a workload the file does not hold, a row with
a missing field or JSON that TVM could not read back (a damaged file).
"""

from __future__ import annotations

import json

from .jsonlines import text_ok
from .schema import valid_run_secs

INVALID = "records with a latency that is not a positive number"
ORPHAN = "rows naming a workload the file does not hold (a damaged file)"
DAMAGED = "incomplete or unreadable rows (a damaged file)"

_RECORD_COLUMNS = ("workload_id", "target_sha256", "target_key", "target_json", "trace_json",
                   "run_secs_json", "mean_sec", "args_info_json", "device", "tvm_version",
                   "run_uid", "created_at")
_RUN_COLUMNS = ("uid", "host", "user", "model_sha256", "command", "target_key", "trials",
                "started_at", "ended_at")


class MergeCounts(dict):
    """Rows added per table; `skipped` counts the rows left out, by reason."""

    def __init__(self):
        super().__init__({"workloads": 0, "runs": 0, "records": 0, "failures": 0,
                          "tactic records": 0})
        self.skipped: dict[str, int] = {}

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def summary(self) -> str:
        """The merge's one line: "1 workloads, ... added; skipped 2 rows naming ..."."""
        text = ", ".join(f"{n} {k}" for k, n in self.items()) + " added"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {k}" for k, n in self.skipped.items())
        return text


def merge(store, other) -> MergeCounts:
    """Copy another tvmopt database's (an open store's) workloads, runs, records, failures and
    tactic records into `store`: all of them or, on any error, none."""
    counts = MergeCounts()
    with store.write():
        sha_of = _workloads(store, other, counts)
        for row in other.conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"):
            counts["runs"] += _insert(store, counts, "runs", _RUN_COLUMNS, row, (0, 7))
        if other.has_table("run_tasks"):
            columns = ("run_uid", "ir_sha256", "task", "weight")
            for row in other.conn.execute(f"SELECT {', '.join(columns)} FROM run_tasks"):
                _insert(store, counts, "run_tasks", columns, row, (0, 1, 3))
        for row in other.conn.execute(f"SELECT {', '.join(_RECORD_COLUMNS)} FROM records"):
            counts["records"] += _record(store, counts, dict(zip(_RECORD_COLUMNS, row)), sha_of)
        columns = ("workload_id", "target_sha256", "target_key", "trace_sha256", "run_uid",
                   "created_at")
        for row in other.conn.execute(f"SELECT {', '.join(columns)} FROM failures"):
            if row[0] not in sha_of:
                counts.skip(ORPHAN)
                continue
            counts["failures"] += _insert(store, counts, "failures", columns,
                                          (sha_of[row[0]][0], *row[1:]), (1, 2, 3, 5))
        added, invalid, damaged = store._merge_tactics(other)
        counts["tactic records"] = added
        counts.skip(INVALID, invalid)
        counts.skip(DAMAGED, damaged)
    return counts


def _workloads(store, other, counts: MergeCounts) -> dict[int, tuple[int, str]]:
    """The other file's intact workloads, added here: {its id: (the id here, IR hash)}."""
    out = {}
    for wid, ir_sha, shash, name, ir_json, created in other.conn.execute(
            "SELECT id, ir_sha256, shash, name, ir_json, created_at FROM workloads"):
        if not (isinstance(ir_sha, str) and isinstance(ir_json, str) and text_ok(ir_json)
                and shash is not None and created is not None):
            counts.skip(DAMAGED)
            continue
        counts["workloads"] += _insert(store, counts, "workloads", (
            "ir_sha256", "shash", "name", "ir_json", "created_at"),
            (ir_sha, shash, name, ir_json, created), ())
        out[wid] = (store.conn.execute("SELECT id FROM workloads WHERE ir_sha256 = ?",
                                       [ir_sha]).fetchone()[0], ir_sha)
    return out


def _record(store, counts: MergeCounts, values: dict, sha_of: dict) -> int:
    if values["workload_id"] not in sha_of:
        counts.skip(ORPHAN)
        return 0
    if not valid_run_secs(values["run_secs_json"]):
        counts.skip(INVALID)
        return 0
    texts = ("target_sha256", "target_key", "target_json", "trace_json", "created_at")
    if not all(isinstance(values[c], str) for c in texts) or not all(
            text_ok(values[c]) for c in ("target_json", "trace_json", "args_info_json")):
        counts.skip(DAMAGED)
        return 0
    secs = json.loads(values["run_secs_json"])  # the mean the file claims is not trusted
    values["workload_id"], sha = sha_of[values["workload_id"]]
    values["mean_sec"] = sum(secs) / len(secs)
    return int(store._insert_record(values, sha))


def _insert(store, counts: MergeCounts, table: str, columns, row, required) -> int:
    """Add one row unless it is here already (1 if added); a row without a value in a `required`
    column (indexes) is skipped as damaged."""
    if any(row[i] is None for i in required):
        counts.skip(DAMAGED)
        return 0
    return store.conn.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
                              f"VALUES ({', '.join('?' * len(columns))})", list(row)).rowcount
