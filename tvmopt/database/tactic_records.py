"""Tactic records: a kernel library's configurations, measured per layer on a target.

A MetaSchedule record is a schedule of one TIR workload; a tactic record is one compiled library
kernel (say a CUTLASS tile and cluster shape) timed on one layer, identified by what its time
depends on: the layer's operation, epilogue and GEMM size (`layer_key`). They share the file, the
target identity and the team operations (merge, prune, export/import, stats) with MetaSchedule's
records. A tactic that cannot run a layer, or computes it wrongly, is stored as a failure so that
later tunes do not measure it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import TvmoptError
from .identity import canonical_json, sha256, target_identity
from .jsonlines import BadLine, loads
from .schema import now, valid_run_secs

EXPORT_FILE = "tvmopt_tactic_records.json"  # beside TVM's database files, one record per line

_COLUMNS = ("layer_key", "provider", "tactic", "target_sha256", "target_key", "target_json",
            "run_secs_json", "mean_sec", "error", "device", "library_version", "run_uid",
            "created_at")


@dataclass(frozen=True)
class TacticRecord:
    layer_key: str
    provider: str
    tactic: str
    mean_sec: float
    device: str | None


def tactic_identity(values: dict) -> str:
    """The measurement (or the failure), not the route it came by: merge-stable."""
    outcome = values["run_secs_json"] if values["mean_sec"] is not None else "failed"
    return sha256(canonical_json(["tactic", values["layer_key"], values["provider"],
                                  values["tactic"], values["target_sha256"], outcome]))


def _checked(values: dict) -> dict | None:
    """A row as stored, or None when its times are not positive finite numbers or its target
    does not hash to its identity."""
    if sha256(values["target_json"]) != values["target_sha256"]:
        return None
    if values.get("run_secs_json") is None:
        return {**values, "mean_sec": None, "error": values.get("error") or "failed"}
    if not valid_run_secs(values["run_secs_json"]):
        return None
    secs = [float(s) for s in json.loads(values["run_secs_json"])]
    return {**values, "run_secs_json": json.dumps(secs), "mean_sec": sum(secs) / len(secs),
            "error": None}


class TacticRecords:
    """The tactic_records table, as methods of the tuning store (`self.conn`, `self.write`)."""

    def add_tactic_record(self, layer_key: str, provider: str, tactic: str, target,
                          run_secs: list[float] | None, *, error: str | None = None,
                          device: str | None = None, library_version: str | None = None,
                          run_uid: str | None = None) -> str:
        """Store one tactic's times on a layer (or, with run_secs None, its failure): "added",
        "duplicate", or "invalid" (times that no measurement gives, never stored)."""
        tsha, tkey, tjson = target_identity(target)
        values = _checked({
            "layer_key": layer_key, "provider": provider, "tactic": tactic,
            "target_sha256": tsha, "target_key": tkey, "target_json": tjson,
            "run_secs_json": None if run_secs is None else json.dumps(run_secs),
            "error": error, "device": device, "library_version": library_version,
            "run_uid": run_uid, "created_at": now()})
        if values is None:
            return "invalid"
        with self.write():
            return "added" if self._insert_tactic(values) else "duplicate"

    def _insert_tactic(self, values: dict) -> bool:
        cols = ["uid", *_COLUMNS]
        return self.conn.execute(
            f"INSERT OR IGNORE INTO tactic_records ({', '.join(cols)}) VALUES "
            f"({', '.join('?' * len(cols))})",
            [tactic_identity(values), *(values[c] for c in _COLUMNS)]).rowcount == 1

    def best_tactic(self, layer_key: str, target_sha256: str) -> TacticRecord | None:
        """The fastest tactic measured for a layer on a target, of any provider."""
        if not self.has_table("tactic_records"):  # a read-only file from before the migration
            return None
        row = self.conn.execute(
            "SELECT layer_key, provider, tactic, mean_sec, device FROM tactic_records WHERE "
            "layer_key = ? AND target_sha256 = ? AND mean_sec IS NOT NULL ORDER BY mean_sec, id "
            "LIMIT 1", [layer_key, target_sha256]).fetchone()
        return TacticRecord(*row) if row else None

    def ran_tactics(self, layer_key: str, target_sha256: str) -> set[str]:
        """Tactics of any provider that ran a layer on a target (measured, not failed)."""
        if not self.has_table("tactic_records"):
            return set()
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT tactic FROM tactic_records WHERE layer_key = ? AND target_sha256 = ? "
            "AND mean_sec IS NOT NULL", [layer_key, target_sha256])}

    def measured_tactics(self, layer_key: str, target_sha256: str, provider: str) -> set[str]:
        """Tactics of a provider measured (or failed) for a layer on a target."""
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT tactic FROM tactic_records WHERE layer_key = ? AND target_sha256 = ? "
            "AND provider = ?", [layer_key, target_sha256, provider])}

    def tactic_times(self, target_sha256: str, provider: str) -> dict[str, dict[str, float | None]]:
        """{layer_key: {tactic: its best mean seconds, None where it only ever failed}} of a
        provider on a target: what unmeasured layers' tactics are predicted from."""
        if not self.has_table("tactic_records"):
            return {}
        times: dict[str, dict[str, float | None]] = {}
        for key, tactic, sec in self.conn.execute(
                "SELECT layer_key, tactic, min(mean_sec) FROM tactic_records WHERE "
                "target_sha256 = ? AND provider = ? GROUP BY layer_key, tactic",
                [target_sha256, provider]):
            times.setdefault(key, {})[tactic] = sec
        return times

    def tactic_stats(self, target_sha256: str) -> dict:
        if not self.has_table("tactic_records"):
            return {"tactic_records": 0, "tactic_failures": 0, "layers": []}
        measured, failed = self.conn.execute(
            "SELECT count(mean_sec), count(*) - count(mean_sec) FROM tactic_records "
            "WHERE target_sha256 = ?", [target_sha256]).fetchone()
        best = self.conn.execute(
            "SELECT layer_key, provider, tactic, min(mean_sec), count(*) FROM tactic_records "
            "WHERE target_sha256 = ? AND mean_sec IS NOT NULL GROUP BY layer_key ORDER BY "
            "layer_key", [target_sha256]).fetchall()
        return {"tactic_records": measured, "tactic_failures": failed, "layers": [
            {"layer_key": r[0], "provider": r[1], "tactic": r[2], "best_sec": r[3],
             "records": r[4]} for r in best]}

    def _merge_tactics(self, other) -> tuple[int, int, int]:
        """(added, skipped as invalid, skipped as incomplete) from another store's tactic
        records."""
        if not other.has_table("tactic_records"):
            return 0, 0, 0
        added = invalid = damaged = 0
        for row in other.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM tactic_records"):
            try:
                values = _checked(dict(zip(_COLUMNS, row)))
            except (TypeError, AttributeError):  # no text where the target belongs
                values = {"layer_key": None}
            if values is None:
                invalid += 1
            elif any(values.get(c) is None for c in _COLUMNS[:6] + ("created_at",)):
                damaged += 1
            else:
                added += self._insert_tactic(values)
        return added, invalid, damaged

    def _prune_tactics(self, keep: int) -> int:
        """Keep the best `keep` measured tactics per layer, provider and target (and failures,
        which keep later tunes from measuring a broken tactic again)."""
        return self.conn.execute(
            "DELETE FROM tactic_records WHERE id IN (SELECT id FROM ("
            "  SELECT id, row_number() OVER (PARTITION BY layer_key, provider, target_sha256 "
            "  ORDER BY mean_sec, id) AS rank FROM tactic_records WHERE mean_sec IS NOT NULL) "
            "WHERE rank > ?)", [keep]).rowcount

    def _export_tactics(self, directory: Path) -> int:
        rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM tactic_records ORDER BY "
                                 "target_sha256, layer_key, mean_sec").fetchall()
        with open(directory / EXPORT_FILE, "x") as f:
            for row in rows:
                f.write(canonical_json(dict(zip(_COLUMNS, row))) + "\n")
        return len(rows)

    def _import_tactics(self, directory: Path) -> dict[str, int]:
        """Tactic records from an export (absent in TVM's own database directories)."""
        path = directory / EXPORT_FILE
        counts = {"tactics_added": 0, "tactics_duplicate": 0, "tactics_invalid": 0}
        if not path.is_file():
            return counts
        with self.write(), open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    row = loads(line.decode("utf-8"))
                    values = _checked({c: row[c] for c in _COLUMNS})
                    if values is not None and any(not isinstance(v, str | int | float | None)
                                                  for v in values.values()):
                        raise TypeError
                except BadLine as e:  # nested too deep, a number out of range, not JSON
                    raise TvmoptError(f"{path}:{number}: not a tactic record: {e}; fix or "
                                      "delete that line, or re-export it with `tvmopt db export`"
                                      ) from None
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise TvmoptError(f"{path}:{number}: not a tactic record; re-export it with "
                                      "`tvmopt db export`") from None
                if values is None:
                    counts["tactics_invalid"] += 1
                else:
                    counts["tactics_added" if self._insert_tactic(values)
                           else "tactics_duplicate"] += 1
        return counts
