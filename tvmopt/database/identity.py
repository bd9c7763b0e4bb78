"""What identifies a workload, a target and a record, the same on every machine (merge keys)."""

from __future__ import annotations

import hashlib
import json


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def workload_identity(mod) -> str:
    """Hash of the printed TIR: stable across platforms, unlike TVM's structural hash (#14188)."""
    return sha256(mod.script(show_meta=True))


def record_identity(workload_sha256: str, target_sha256: str, trace_json: str,
                    run_secs_json: str) -> str:
    """A measurement: what was measured, on what, and the times it took. Not how it travelled
    (device and run are provenance), so a record that reaches a file twice is stored once."""
    return sha256(canonical_json([workload_sha256, target_sha256, trace_json, run_secs_json]))


def target_identity(target) -> tuple[str, str, str]:
    """(sha256, readable key, canonical JSON) of a tvm Target, ignoring its host and core count.

    A kernel's schedule depends on the device it runs on, not on the CPU that launches it; and
    MetaSchedule needs `num-cores` only to search CPU schedules, whose parallel loops run on any
    number of cores, so a build (which has no such attribute) must find them.
    """
    from ..targets import target_key

    exported = json.loads(str(target))
    exported.pop("host", None)
    exported.pop("num-cores", None)
    text = canonical_json(exported)
    return sha256(text), target_key(exported), text
