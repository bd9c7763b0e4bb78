"""Provider 3: default schedules for kernels nobody tuned. GPUs: tensor-core GEMMs tiled to fill
the GPU (`tensorcore_gemm`), then DLight's rules for everything else. CPUs: convolutions and
matmuls get a parallel, vectorised register tile (`cpu_gemm`); elementwise kernels and row
reductions (softmax, layer norm) run in parallel, vectorised along the contiguous axis
(`cpu_rows`). The tuner measures these same schedules first, as each task's baseline record.
"""

from __future__ import annotations

import re

from . import cpu_gemm, cpu_rows, winograd
from .tensorcore_gemm import TensorCoreGemm


class DefaultSchedules:
    name = "default"

    def provide(self, kernels, ctx) -> dict[str, object]:
        out = {}
        for kernel in kernels:
            sch = default_schedule(kernel.func, ctx.target)
            if sch is not None:
                out[kernel.name] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        return out


def default_schedule(func, target):
    """The traced Schedule the default rules give `func`; None when no rule applies (the kernel
    then stays unscheduled)."""
    from tvm import relax, s_tir
    from tvm.s_tir import dlight as dl

    if not relax.pipeline.BackendDispatcher.is_gpu_target(target):
        return (winograd.schedule(func, target) or cpu_gemm.schedule(func, target)
                or cpu_rows.schedule(func, target))
    rules = (TensorCoreGemm(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
             dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    chosen = rule_target(target)
    with chosen:
        for rule in rules:
            space = rule.apply(func, chosen, False)
            if space is not None:
                return space if isinstance(space, s_tir.Schedule) else space[0]
    return None


def hand_scheduled(func) -> bool:
    """Kernels whose default schedule is written for their structure and not tuned: Winograd's
    transforms (MetaSchedule's search spent minutes per trial on their unrolled points, and its
    candidates do not unroll them)."""
    return winograd.is_transform(func)


def baseline(workload, target):
    """What a kernel of `workload` (a task's module) gets from the build without a tuned record:
    (its default schedule, or else its plain loop nest, as a traced Schedule; that trace spelled
    as the tuning store keeps it, to find the baseline's record)."""
    from tvm import s_tir

    from ..database.metaschedule import stored_trace

    sch = default_schedule(workload["main"], target)
    if sch is None:
        sch = s_tir.Schedule(workload)
    return sch, stored_trace(sch.trace, workload)


def rule_target(target):
    """The target DLight chooses its rules by: the same, with a family-specific arch such as
    `sm_90a` read as `sm_90`. DLight parses the arch as digits only and, failing, never uses
    tensor cores (every Hopper preset lost them). The kernels are still compiled for `target`."""
    import tvm

    arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
    plain = re.fullmatch(r"(sm_\d+)[a-z]", arch)
    if not plain:
        return target
    return tvm.target.Target({**target.export(), "arch": plain.group(1)})
