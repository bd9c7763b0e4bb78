"""Provider 1: kernels with a tuned record for this exact target get the best record's schedule.

One database lookup per task (kernels of one structure share it), replacing TVM's
MetaScheduleApplyDatabase, which would look each kernel up a second time. When the best record
is the baseline itself (the default schedule or plain loop nest, which the tuner measures first),
the kernel is left to the later providers, so the manifest says where it really came from.
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
                best_by_task[kernel.task.name] = (
                    best[0] if best and not _is_default(best[0], kernel.task.mod, ctx.target)
                    else None)
            record = best_by_task[kernel.task.name]
            if record is not None:
                out[kernel.name] = apply_record(kernel.func, record)
        return out


def _is_default(record, workload, target) -> bool:
    from .defaults import baseline

    return record.trace_json == baseline(workload, target)[1]
