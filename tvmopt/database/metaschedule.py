"""The tuning store seen as MetaSchedule's Database (for the tuner), and tuned records applied to
kernels (for the build). Importing this module imports MetaSchedule: only the stages that need it do.
"""

from __future__ import annotations

import json

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from .identity import target_identity


def record_to_json(record) -> list:
    """TuningRecord -> JSON-able list, including traces that carry TVM objects.

    Tensor-core traces pass IndexMaps as instruction inputs, which MetaSchedule's own Python
    `as_json` rejects ("Not supported type"); TVM's C++ JSONDatabase writes them as their
    `save_json` text, which is also what `TuningRecord.from_json` reads back. Do the same.
    """
    from tvm.s_tir.meta_schedule import _ffi_api

    return _plain(_ffi_api.TuningRecordAsJSON(record))


def stored_trace(trace, mod) -> str:
    """A schedule's trace on workload `mod`, spelled as the store keeps it (`trace_json`)."""
    from .identity import canonical_json

    return canonical_json(record_to_json(
        ms.database.TuningRecord(trace, ms.database.Workload(mod)))[0])


def _plain(obj):
    import tvm
    from tvm.tirx import FloatImm, IntImm
    from tvm_ffi import Array, Map

    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, IntImm | FloatImm):
        return obj.value
    if isinstance(obj, Array | list | tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, Map | dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return tvm.ir.save_json(obj)


def record_from_row(row, workload):
    """A stored record as MetaSchedule's TuningRecord (its trace replayed on `workload`)."""
    obj = [json.loads(row.trace_json), row.run_secs, json.loads(row.target_json),
           json.loads(row.args_info_json) if row.args_info_json else None]
    try:
        return ms.database.TuningRecord.from_json(obj, workload)
    except ValueError as e:
        if "is not registered" not in str(e):
            raise
        # Tensor-core traces name intrinsics that only this import registers; it takes seconds,
        # so it is paid only by builds that meet such a record.
        import tvm.s_tir.tensor_intrin  # noqa: F401

        return ms.database.TuningRecord.from_json(obj, workload)


def apply_record(func, row):
    """`func` (a kernel) scheduled by a stored record's trace, as MetaScheduleApplyDatabase does:
    the kernel keeps its own attributes and is marked scheduled."""
    import tvm

    from ..tasks import workload_of

    workload = ms.database.Workload(workload_of(func))
    record = record_from_row(row, workload)
    sch = tvm.s_tir.Schedule(workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod["main"].with_attrs(func.attrs).with_attr("tirx.is_scheduled", True)


@derived_object
class TargetDatabase(ms.database.PyDatabase):
    """MetaSchedule's Database interface over a TuningStore, scoped to one target: lookups only
    return records measured for it, and commits carry the measuring device and tune run."""

    def __init__(self, store, target, *, device=None, run_uid=None):
        super().__init__()
        self.store = store
        self.target = target
        self.target_sha256 = target_identity(target)[0]
        self.device = device
        self.run_uid = run_uid

    def has_workload(self, mod) -> bool:
        return self.store.find_workload(mod) is not None

    def commit_workload(self, mod):
        self.store.add_workload(mod)
        return ms.database.Workload(mod)

    def commit_tuning_record(self, record) -> None:
        workload_id = self.store.add_workload(record.workload.mod)
        self.store.add_record(
            workload_id, record.target or self.target, record_to_json(record),
            device=self.device, run_uid=self.run_uid)

    def _records(self, workload, workload_id: int, target_sha256: str, k: int):
        return [record_from_row(r, workload)
                for r in self.store.best_records(workload_id, target_sha256, k)]

    def get_top_k(self, workload, top_k: int):
        workload_id = self.store.find_workload(workload.mod)
        if workload_id is None or top_k <= 0:
            return []
        return self._records(workload, workload_id, self.target_sha256, top_k)

    def get_all_tuning_records(self):
        out = []
        for workload_id in self.store.workload_ids_for_target(self.target_sha256):
            workload = ms.database.Workload(self.store.load_workload_mod(workload_id))
            out += self._records(workload, workload_id, self.target_sha256, 1 << 30)
        return out

    def query_tuning_record(self, mod, target, workload_name=None):
        workload_id = self.store.find_workload(mod)
        if workload_id is None:
            return None
        records = self._records(ms.database.Workload(mod), workload_id,
                                target_identity(target)[0], 1)
        return records[0] if records else None

    def __len__(self) -> int:
        return self.store.count_records(self.target_sha256)
