"""Stage 2: the graph pipeline, Relax module in, fused Relax module (with TIR kernels) out.

Each pass is named, so `tvmopt build --help` can list the pipeline and tests can run one pass and
look at its effect. TVM is imported only when the pipeline runs: each pass's `make` is handed
`tvm.relax`, so listing the pipeline (the CLI's help) costs nothing. The output is the module that tuning extracts its tasks from and that the build
applies tuned schedules to: both must see the same kernels, so both call `run_pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class PipelineOptions:
    precision: str = "fp32"
    layout: str = "NCHW"


@dataclass(frozen=True)
class GraphPass:
    name: str
    summary: str
    make: Callable[[object, object], list]  # (tvm.relax, target) -> the TVM passes
    applies: Callable[[PipelineOptions], bool] = lambda opts: True


def _nhwc_passes(relax, target):
    return [
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]}),
        relax.transform.FoldConstant(),  # transpose the constant weights once, at build time
    ]


def _accumulator_dtype(target) -> str:
    # TVM 0.27's tensor-core schedules fail to build an fp32 accumulator whose fused epilogue
    # casts back to fp16 ("tvm_access_ptr element type must match"), so GPUs accumulate in fp16.
    return "float16" if target.kind.name in ("cuda", "rocm") else "float32"


PIPELINE: tuple[GraphPass, ...] = (
    GraphPass(
        "fold-batchnorm",
        "fold inference batch-norm into the preceding conv weights, decompose the rest",
        lambda relax, target: [
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
        ],
    ),
    GraphPass("fold-constant", "evaluate everything that depends only on weights",
              lambda relax, target: [relax.transform.FoldConstant()]),
    GraphPass("dead-code-elimination", "drop bindings and functions nothing uses",
              lambda relax, target: [relax.transform.DeadCodeElimination()]),
    GraphPass("layout-nhwc", "convert conv2d to NHWC/OHWI (--layout NHWC)", _nhwc_passes,
              lambda opts: opts.layout == "NHWC"),
    GraphPass(
        "mixed-precision-fp16",
        "run conv/matmul and elementwise ops in fp16 (--precision fp16); accumulate in fp32 on "
        "CPUs, in fp16 on GPUs",
        lambda relax, target: [relax.transform.ToMixedPrecision(out_dtype=_accumulator_dtype(target))],
        lambda opts: opts.precision == "fp16",
    ),
    GraphPass(
        "legalize",
        "lower Relax ops to TIR kernels",
        lambda relax, target: [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
        ],
    ),
    GraphPass(
        "fuse",
        "fuse elementwise/injective ops into their producers: fewer, larger kernels",
        lambda relax, target: [relax.transform.FuseOps(), relax.transform.FuseTIR()],
    ),
)

PASS_NAMES = tuple(p.name for p in PIPELINE)


def describe_pipeline() -> str:
    return "\n".join(f"{i}. {p.name}: {p.summary}" for i, p in enumerate(PIPELINE, 1))


def run_pipeline(mod, target, options: PipelineOptions = PipelineOptions(), *,
                 only: tuple[str, ...] | None = None):
    """Run the graph pipeline (or the passes named in `only`, in pipeline order)."""
    import tvm
    from tvm import relax

    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    if options.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    with target, tvm.transform.PassContext(opt_level=3):
        # Library dispatch first, as tvm.compile would, so tuned kernels match what the build sees.
        mod = tvm.transform.Sequential(relax.pipeline.library_dispatch_passes(target))(mod)
        for gp in PIPELINE:
            if (only is not None and gp.name not in only) or not gp.applies(options):
                continue
            mod = tvm.transform.Sequential(gp.make(relax, target), name=gp.name)(mod)
            log.debug("pass %s done", gp.name)
    return mod


def count_kernels(mod) -> int:
    """The number of TIR kernel calls the main function makes."""
    import tvm
    from tvm import relax

    calls = 0

    def visit(expr):
        nonlocal calls
        if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            calls += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return calls


def op_names(mod) -> list[str]:
    """Relax operator names called in the main function, e.g. relax.nn.batch_norm."""
    import tvm
    from tvm import relax

    names = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names
