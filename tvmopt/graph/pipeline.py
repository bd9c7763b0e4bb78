"""The graph pipeline's table: which passes run, in which order, under which options.

Each pass is named, so `tvmopt build --help` can list the pipeline and tests can run one pass and
look at its effect. TVM is imported only when the pipeline runs: each pass's `make` is handed
`tvm.relax`, so listing the pipeline (the CLI's help) costs nothing. The output is the module that
tuning extracts its tasks from and that the build applies tuned schedules to: both must see the
same kernels, so both call `run_pipeline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from . import arithmetic, layouts, mixed_precision, weight_transforms

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
LAYOUTS = ("NCHW", "NHWC")
KERNELS = ("all", "tvm")  # all: kernel libraries where they apply, TVM kernels elsewhere


@dataclass(frozen=True)
class PipelineOptions:
    precision: str = "fp32"
    layout: str = "NCHW"
    kernels: str = "all"


@dataclass(frozen=True)
class GraphPass:
    name: str
    summary: str
    make: Callable[[object, object], list]  # (tvm.relax, target) -> the TVM passes
    applies: Callable[[PipelineOptions], bool] = lambda opts: True
    # Set for an optimisation the model is correct without: if TVM fails in it, the module
    # stays as it was and this says so (else the failure ends the build).
    skipped_on_failure: str | None = None


def _on_cpus(make):
    """A GraphPass maker running the module pass make(target) on CPU targets only."""
    return lambda relax, target: ([] if relax.pipeline.BackendDispatcher.is_gpu_target(target)
                                  else [make(target)])


def _kernel_library_passes(relax, target):
    from ..kernels import library  # imports TVM: only when a pipeline runs

    return library.graph_passes(relax, target)


PIPELINE: tuple[GraphPass, ...] = (
    GraphPass(
        "variadic-as-binary",
        "compute ONNX's Sum/Max/Min/Mean of several tensors as a chain of binary ops: TVM imports "
        "them as broadcast copies stacked and reduced, which costs memory traffic, stops fusion "
        "and stops layout conversion",
        lambda relax, target: [arithmetic.variadic_as_binary(),
                               relax.transform.CanonicalizeBindings(),
                               relax.transform.DeadCodeElimination()],
    ),
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
    GraphPass(
        "integer-powers",
        "compute x**2, x**3 and x**4 as products: TVM compiles CUDA with fast math, where pow() "
        "of a negative base is NaN (T5's and opset-11 layer norms, the tanh GELU)",
        lambda relax, target: [arithmetic.integer_powers()],
    ),
    GraphPass(
        "rms-norms",
        "compute RMSNorm written out op by op (Llama, T5, Qwen) as one nn.rms_norm: one kernel "
        "instead of two or three, statistics in fp32 under fp16, and the kernel library's",
        lambda relax, target: [arithmetic.rms_norms(),
                               relax.transform.DeadCodeElimination()],
    ),
    GraphPass("dead-code-elimination", "drop bindings and functions nothing uses",
              lambda relax, target: [relax.transform.DeadCodeElimination()]),
    GraphPass("layout-nhwc", "convert conv2d to NHWC/OHWI (--layout NHWC)", layouts.nhwc_passes,
              lambda opts: opts.layout == "NHWC", skipped_on_failure="the convs stay NCHW"),
    GraphPass(
        "layout-nchwc",
        "CPUs: convert conv2d to NCHW{b}c with weights packed at build time to OIHW{b}i{b}o, b the "
        "SIMD width (AVX-512: 16, AVX2: 8, NEON: 4), so a conv's inner loop is one vector of "
        "output channels; elementwise ops and pools follow the packed layout",
        # and concats and splits by sections; what TVM's layout inference cannot carry in it
        # (transposed convs, resizes, channel splits by indices, norms: packed_conv.FOLLOW_*)
        # stays NCHW, with layout transforms at its boundary
        layouts.packed_conv_passes,
        lambda opts: opts.layout == "NCHW",
        skipped_on_failure="the convs stay NCHW",
    ),
    GraphPass(
        "fp16-range-constants",
        "clamp finite constants beyond fp16's range (e.g. masks of float32's most negative value) "
        "to +-65504 before fp16, as Hugging Face does in fp16: 0 x -inf would be NaN",
        lambda relax, target: [mixed_precision.clamp_to_fp16_range()],
        lambda opts: opts.precision == "fp16",
    ),
    GraphPass(
        "mixed-precision-fp16",
        "run conv/matmul and elementwise ops in fp16 (--precision fp16), accumulating in fp32 "
        "as cuDNN and PyTorch do",
        lambda relax, target: [relax.transform.ToMixedPrecision(out_dtype="float32")],
        lambda opts: opts.precision == "fp16",
        skipped_on_failure="the model stays fp32",
    ),
    GraphPass(
        "fp16-activations",
        "keep activations fp16 between layers, as PyTorch's .half() does: elementwise ops, data "
        "movement and layer norm (fp32 statistics) whose inputs are fp16 stay fp16 instead of "
        "widening the residual stream to fp32; reductions and softmax stay fp32",
        lambda relax, target: [mixed_precision.fp16_activations(),
                               relax.transform.CanonicalizeBindings(),
                               relax.transform.EliminateCommonSubexpr(),
                               relax.transform.DeadCodeElimination()],
        lambda opts: opts.precision == "fp16",
    ),
    GraphPass(
        "partition-kernel-library",
        "give fp16 matmuls and NHWC convs (with bias, activation or residual epilogues) kernels "
        "of their own that the CUTLASS library can run on Hopper (--kernels all)",
        _kernel_library_passes,
        lambda opts: opts.precision == "fp16" and opts.kernels == "all",
    ),
    GraphPass(
        "fast-math",
        "CPUs: fp32 exp, erf, tanh and softmax as TOPI's polynomial approximations, which "
        "vectorise (LLVM calls libm once per element for the exact ones: a BERT encoder's GELU and "
        "softmax were 86% of its time)",
        _on_cpus(lambda target: arithmetic.fast_math()),
    ),
    GraphPass(
        "pack-matmul-weights",
        "CPUs: fp32 matmuls by constant weights read them packed at build time into panels of "
        "one SIMD vector's width, [N/b, K, b], which the register tile streams front to back",
        _on_cpus(weight_transforms.packed_matmul_weights),
    ),
    GraphPass(
        "winograd",
        "CPUs: fp32 3x3 stride-1 packed convs as Winograd F(4x4, 3x3), an input transform, 36 "
        "channel GEMMs and an output transform, with the weights transformed at build time: a "
        "quarter of a direct conv's multiply-adds",
        _on_cpus(lambda target: weight_transforms.winograd_convs()),
        lambda opts: opts.layout == "NCHW",
    ),
    GraphPass("legalize", "lower Relax ops to TIR kernels (packed convs to conv2d_NCHWc)",
              layouts.legalize_passes),
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
                 only: tuple[str, ...] | None = None, skipped: list[str] | None = None):
    """Run the graph pipeline (or the passes named in `only`, in pipeline order). A pass that may
    be skipped and fails leaves the module as it was, with a line appended to `skipped`."""
    import tvm
    from tvm import relax

    if options.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    if options.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    if options.kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}")
    with target, tvm.transform.PassContext(opt_level=3):
        # Library dispatch first, as tvm.compile would, so tuned kernels match what the build sees.
        mod = tvm.transform.Sequential(relax.pipeline.library_dispatch_passes(target))(mod)
        for gp in PIPELINE:
            if (only is not None and gp.name not in only) or not gp.applies(options):
                continue
            try:
                mod = tvm.transform.Sequential(gp.make(relax, target), name=gp.name)(mod)
            except Exception as e:  # noqa: BLE001 - TVM raises assorted types from C++
                if gp.skipped_on_failure is None:
                    raise
                from ..errors import first_line

                line = f"{gp.name} failed in TVM ({first_line(e)}): {gp.skipped_on_failure}"
                log.warning("%s", line)
                if skipped is not None:
                    skipped.append(line)
                continue
            log.debug("pass %s done", gp.name)
    return mod
