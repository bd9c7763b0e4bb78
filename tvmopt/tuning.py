"""Stage 3: tuning tasks — the distinct TIR kernels of a fused model, with their cost weights.

Task extraction runs on the output of `passes.run_pipeline`, which is also what the build applies
tuned schedules to, so a record stored for a task is found again at build time.
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
