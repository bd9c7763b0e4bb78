"""Provider 1: kernels with a tuned record for this exact target get the best record's schedule.

One database lookup per task (kernels of one structure share it), replacing TVM's
MetaScheduleApplyDatabase, which would look each kernel up a second time.
"""

from __future__ import annotations

from ..database import target_identity


class TunedRecords:
    name = "tuned"

    def provide(self, kernels, ctx) -> dict[str, object]:
        from ..database.metaschedule import apply_record

        target_sha256 = target_identity(ctx.target)[0]
        best_by_task = {}
        out = {}
        for kernel in kernels:
            if kernel.task is None:
                continue
            if kernel.task.name not in best_by_task:
                workload_id = ctx.store.find_workload(kernel.task.mod)
                best = (ctx.store.best_records(workload_id, target_sha256, 1)
                        if workload_id is not None else [])
                best_by_task[kernel.task.name] = best[0] if best else None
            record = best_by_task[kernel.task.name]
            if record is not None:
                out[kernel.name] = apply_record(kernel.func, record)
        return out
