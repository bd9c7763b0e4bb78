"""Provider 2: TVM's default schedules for kernels nobody tuned: DLight's rules on GPUs.

CPUs get none yet (DLight's CPU rules cover only GEMV and reductions); their kernels stay
unscheduled.
"""

from __future__ import annotations


class DefaultSchedules:
    name = "default"

    def provide(self, kernels, ctx) -> dict[str, object]:
        import tvm
        from tvm import relax
        from tvm.s_tir import dlight as dl

        if not kernels or not relax.pipeline.BackendDispatcher.is_gpu_target(ctx.target):
            return {}
        mod = tvm.IRModule({k.name: k.func for k in kernels})
        with ctx.target:
            mod = dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                dl.gpu.GeneralReduction(), dl.gpu.Fallback(),
            )(mod)
        return {gv.name_hint: func for gv, func in mod.functions.items()
                if func.attrs is not None and func.attrs.get("tirx.is_scheduled")}
