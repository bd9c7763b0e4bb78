"""Provider 2: TVM's default schedules for kernels nobody tuned: DLight's rules on GPUs.

CPUs get none yet (DLight's CPU rules cover only GEMV and reductions); their kernels stay
unscheduled.
"""

from __future__ import annotations

import re


class DefaultSchedules:
    name = "default"

    def provide(self, kernels, ctx) -> dict[str, object]:
        import tvm
        from tvm import relax
        from tvm.s_tir import dlight as dl

        if not kernels or not relax.pipeline.BackendDispatcher.is_gpu_target(ctx.target):
            return {}
        mod = tvm.IRModule({k.name: k.func for k in kernels})
        with rule_target(ctx.target):
            mod = dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                dl.gpu.GeneralReduction(), dl.gpu.Fallback(),
            )(mod)
        return {gv.name_hint: func for gv, func in mod.functions.items()
                if func.attrs is not None and func.attrs.get("tirx.is_scheduled")}


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
