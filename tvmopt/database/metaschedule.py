"""The tuning store seen as MetaSchedule's Database (for the tuner), and tuned records applied to
kernels (for the build). Importing this module imports MetaSchedule: only the stages that need it do.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os

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
    return parse_record(row.trace_json, row.run_secs, row.target_json, row.args_info_json,
                        workload)


def parse_record(trace_json: str, run_secs, target_json: str, args_info_json: str | None,
                 workload):
    """A record's stored JSON as MetaSchedule's TuningRecord, its trace replayed on `workload`.

    Every trace tvmopt reads goes through here or `read_json_database`: both register the tensor
    intrinsics a trace names before TVM parses it."""
    register_tensor_intrinsics_for(trace_json)
    obj = [json.loads(trace_json), run_secs, json.loads(target_json),
           json.loads(args_info_json) if args_info_json else None]
    return ms.database.TuningRecord.from_json(obj, workload)


def read_json_database(workload_path, record_path) -> list:
    """Every record of TVM's JSONDatabase files (which TVM parses, traces included, as it opens
    them), the tensor intrinsics they name registered first."""
    with open(record_path, encoding="utf-8", errors="replace") as f:
        register_tensor_intrinsics_for(f.read())
    return ms.database.JSONDatabase(str(workload_path), str(record_path),
                                    allow_missing=False).get_all_tuning_records()


# A trace replays `sch.tensorize(block, "wmma_fill_16x16x16_f32")` as this instruction; TVM looks
# the intrinsic up by name, and raises "TensorIntrin ... is not registered" until it is.
_TENSORIZE = '"Tensorize"'


def register_tensor_intrinsics_for(trace_text: str) -> None:
    """Register TVM's tensor intrinsics if `trace_text` (one trace, or a file of records)
    tensorizes: only such traces name one, and registering them all costs seconds."""
    if _TENSORIZE in trace_text:
        register_tensor_intrinsics()


@functools.cache
def register_tensor_intrinsics() -> None:
    """Register every tensor intrinsic TVM ships: CUDA's wmma/mma/ldmatrix, the x86/ARM/RISC-V
    int8 dot products, ROCm's and Hexagon's (`tvm.s_tir.tensor_intrin` registers them as it is
    imported; it has no call to register one by name)."""
    with _fast_frame_modules():
        import tvm.s_tir.tensor_intrin  # noqa: F401


# Frames of code with no source file met while registering, besides those already on the stack
# (`python -m` runs in "<frozen runpy>"): importlib's own (the registration is an import), and
# TVMScript's evaluation of each decorator.
_SOURCELESS = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>", "<ast>")


@contextlib.contextmanager
def _fast_frame_modules():
    """Registration parses some 250 TVMScript functions, and the parser calls `inspect.stack()`
    for each; `inspect.getmodule` finds no module for a sourceless frame ("<frozen runpy>") and
    rescans all of `sys.modules` each time it meets one: 204 s in all, against 24 s without the
    scans, on 2 busy cores. Its file -> module cache is told, while registering, that these files
    have none (a name of no module: the answer it would reach after the scan)."""
    cache = getattr(inspect, "modulesbyfile", None)
    if not isinstance(cache, dict):
        yield
        return
    names, frame = set(_SOURCELESS), inspect.currentframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<") and name.endswith(">"):
            names.add(name)
        frame = frame.f_back
    keys = {k for name in names for k in (name, os.path.normcase(os.path.abspath(name)))}
    added = [k for k in keys if k not in cache]
    for key in added:
        cache[key] = "<no module>"
    try:
        yield
    finally:
        for key in added:
            if cache.get(key) == "<no module>":
                del cache[key]


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
