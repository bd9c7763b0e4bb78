"""Stage 4: the team's tuning database (SQLite): `store` is the file and its operations, `schema`
its migrations and file checks, `metaschedule` the view MetaSchedule tunes into, `merge` the copy
of another file, `jsonlines` the checks on JSON from outside."""

from .identity import canonical_json, target_identity, workload_identity
from .schema import DatabaseUnavailable
from .store import DEFAULT_PATH, FAILED_RUN_SEC, StoredRecord, TuningStore, default_path, open_database

__all__ = ["DEFAULT_PATH", "FAILED_RUN_SEC", "DatabaseUnavailable", "StoredRecord", "TuningStore",
           "canonical_json", "default_path", "open_database", "target_identity",
           "workload_identity"]
