"""Provider 2: kernels with a tuned record for this exact target get the best record's schedule.

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

        out = {}
        for kernel in kernels:
            best = best_record(kernel, ctx)
            if best is not None and not best[1]:
                out[kernel.name] = apply_record(kernel.func, best[0])
        return out


def best_record(kernel, ctx):
    """(the fastest record of the kernel's task on this target, whether that record is the
    baseline) or None (also for a kernel without a task); looked up once per task."""
    task = kernel.task
    if task is None:
        return None
    if task.name not in ctx.best_records:
        workload_id = ctx.store.find_workload(task.mod)
        best = (ctx.store.best_records(workload_id, target_identity(ctx.target)[0], 1)
                if workload_id is not None else [])
        ctx.best_records[task.name] = (best[0], _is_default(best[0], task.mod, ctx.target)) \
            if best else None
    return ctx.best_records[task.name]


def _is_default(record, workload, target) -> bool:
    from .defaults import baseline

    return record.trace_json == baseline(workload, target)[1]
