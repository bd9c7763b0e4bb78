"""Stage 2: the prepared model's kernels as tuning tasks, one per distinct kernel.

A task is MetaSchedule's workload (the kernel alone, named `main`) plus how often the model calls
it; kernels of one structure share a task, so one record serves them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    weight: int  # how many times the model calls this kernel
    flops: float  # per call
    mod: object  # the kernel as a one-function IRModule (MetaSchedule's workload)

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "flops": self.flops}


def extract_tasks(mod, target) -> list[Task]:
    """One task per distinct kernel, heaviest (weight × FLOPs) first."""
    from tvm.s_tir import analysis
    from tvm.s_tir import meta_schedule as ms

    tasks = []
    for t in ms.relax_integration.extract_tasks(mod, target):
        kernel = t.dispatched[0]
        try:
            flops = float(analysis.estimate_tir_flops(kernel))
        except Exception:  # noqa: BLE001 - the estimator rejects some loop forms; FLOPs are advisory
            log.debug("no FLOP estimate for %s", t.task_name)
            flops = 0.0
        tasks.append(Task(t.task_name, int(t.weight), flops, kernel))
    tasks.sort(key=lambda t: (-t.weight * t.flops, t.name))
    return tasks


def workload_of(func):
    """A kernel in MetaSchedule's workload form: alone in a module, named main."""
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def kernels(mod) -> dict[str, object]:
    """{function name: PrimFunc} of the module's TIR kernels."""
    import tvm

    return {gv.name_hint: func for gv, func in mod.functions.items()
            if isinstance(func, tvm.tirx.PrimFunc)}


def kernel_tasks(mod, tasks: list[Task]) -> dict[str, Task]:
    """{kernel function name: its task}; kernels with one structure share one task."""
    import tvm_ffi

    out = {}
    for name, func in kernels(mod).items():
        workload = workload_of(func)
        for task in tasks:
            if tvm_ffi.structural_equal(workload, task.mod):
                out[name] = task
                break
    return out
