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


def _nhwc_passes(relax, target):
    import tvm

    # conv2d_transpose would follow its NHWC input, and TVM lowers it in NCHW/IOHW only (the
    # build then fails in VM codegen): it stays NCHW, transposes at its boundary.
    return [_well_formed_or_raise(tvm.transform.Sequential([
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"],
                                       "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}),
        relax.transform.FoldConstant(),  # transpose the constant weights once, at build time
    ]), "NHWCLayouts")]


def _well_formed_or_raise(convert, name):
    """A module pass running `convert` and raising if its result is not well-formed Relax, so
    that a layout pass's failure (`skipped_on_failure`) leaves the module as it was."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def checked(mod, _ctx):
        converted = convert(mod)
        relax.analysis.well_formed(converted)  # raises at the first violation
        return converted

    return checked


def _packed_conv_passes(relax, target):
    import tvm

    from .kernels import packed_conv

    if relax.pipeline.BackendDispatcher.is_gpu_target(target):
        return []
    convert = _well_formed_or_raise(tvm.transform.Sequential([
        # ops whose layout inference mishandles packed inputs read NCHW (packed_conv.FOLLOW_*)
        _each_relax_function("FenceUnpackedOps", packed_conv.fence_mutator()),
        relax.transform.ConvertLayout({}, packed_conv.layouts_for(target)),
        _each_relax_function("RemoveFences", packed_conv.unfence_mutator()),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),  # pack the constant weights once, at build time
        relax.transform.EliminateCommonSubexpr(),  # one packing of a tensor two convs read
    ]), "PackedConvLayouts")

    @tvm.transform.module_pass(opt_level=0, name="PackedConvLayoutsWhenConvs")
    def when_convs(mod, _ctx):
        # Without convs ConvertLayout only adds work: it transposes even a 0-d reduction result.
        has_conv = any("relax.nn.conv2d" in op_names(mod, gv) for gv, func in mod.functions.items()
                       if isinstance(func, relax.Function))
        return convert(mod) if has_conv else mod

    return [when_convs]


def _on_cpus(make):
    """A GraphPass maker running the module pass make(target) on CPU targets only."""
    return lambda relax, target: ([] if relax.pipeline.BackendDispatcher.is_gpu_target(target)
                                  else [make(target)])


def _legalize_passes(relax, target):
    from .kernels import packed_conv

    return [
        relax.transform.LegalizeOps({"relax.nn.conv2d": packed_conv.legalize_conv2d}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]


PIPELINE: tuple[GraphPass, ...] = (
    GraphPass(
        "variadic-as-binary",
        "compute ONNX's Sum/Max/Min/Mean of several tensors as a chain of binary ops: TVM imports "
        "them as broadcast copies stacked and reduced, which costs memory traffic, stops fusion "
        "and stops layout conversion",
        lambda relax, target: [_variadic_as_binary(), relax.transform.CanonicalizeBindings(),
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
        lambda relax, target: [_integer_powers()],
    ),
    GraphPass("dead-code-elimination", "drop bindings and functions nothing uses",
              lambda relax, target: [relax.transform.DeadCodeElimination()]),
    GraphPass("layout-nhwc", "convert conv2d to NHWC/OHWI (--layout NHWC)", _nhwc_passes,
              lambda opts: opts.layout == "NHWC", skipped_on_failure="the convs stay NCHW"),
    GraphPass(
        "layout-nchwc",
        "CPUs: convert conv2d to NCHW{b}c with weights packed at build time to OIHW{b}i{b}o, b the "
        "SIMD width (AVX-512: 16, AVX2: 8, NEON: 4), so a conv's inner loop is one vector of "
        "output channels; elementwise ops and pools follow the packed layout",
        # and concats and splits by sections; what TVM's layout inference cannot carry in it
        # (transposed convs, resizes, channel splits by indices, norms: packed_conv.FOLLOW_*)
        # stays NCHW, with layout transforms at its boundary
        _packed_conv_passes,
        lambda opts: opts.layout == "NCHW",
        skipped_on_failure="the convs stay NCHW",
    ),
    GraphPass(
        "fp16-range-constants",
        "clamp finite constants beyond fp16's range (e.g. masks of float32's most negative value) "
        "to +-65504 before fp16, as Hugging Face does in fp16: 0 x -inf would be NaN",
        lambda relax, target: [_clamp_to_fp16_range()],
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
        lambda relax, target: [_fp16_activations(), relax.transform.CanonicalizeBindings(),
                               relax.transform.EliminateCommonSubexpr(),
                               relax.transform.DeadCodeElimination()],
        lambda opts: opts.precision == "fp16",
    ),
    GraphPass(
        "partition-kernel-library",
        "give fp16 matmuls and NHWC convs (with bias, activation or residual epilogues) kernels "
        "of their own that the CUTLASS library can run on Hopper (--kernels all)",
        lambda relax, target: _kernel_library_passes(relax, target),
        lambda opts: opts.precision == "fp16" and opts.kernels == "all",
    ),
    GraphPass(
        "fast-math",
        "CPUs: fp32 exp, erf, tanh and softmax as TOPI's polynomial approximations, which "
        "vectorise (LLVM calls libm once per element for the exact ones: a BERT encoder's GELU and "
        "softmax were 86% of its time)",
        _on_cpus(lambda target: _fast_math()),
    ),
    GraphPass(
        "pack-matmul-weights",
        "CPUs: fp32 matmuls by constant weights read them packed at build time into panels of "
        "one SIMD vector's width, [N/b, K, b], which the register tile streams front to back",
        _on_cpus(lambda target: _packed_matmul_weights(target)),
    ),
    GraphPass(
        "winograd",
        "CPUs: fp32 3x3 stride-1 packed convs as Winograd F(4x4, 3x3), an input transform, 36 "
        "channel GEMMs and an output transform, with the weights transformed at build time: a "
        "quarter of a direct conv's multiply-adds",
        _on_cpus(lambda target: _winograd()),
        lambda opts: opts.layout == "NCHW",
    ),
    GraphPass("legalize", "lower Relax ops to TIR kernels (packed convs to conv2d_NCHWc)",
              _legalize_passes),
    GraphPass(
        "fuse",
        "fuse elementwise/injective ops into their producers: fewer, larger kernels",
        lambda relax, target: [relax.transform.FuseOps(), relax.transform.FuseTIR()],
    ),
)

PASS_NAMES = tuple(p.name for p in PIPELINE)


def _kernel_library_passes(relax, target):
    from .kernels import library  # imports TVM: only when a pipeline runs

    return library.graph_passes(relax, target)

FP16_MAX = 65504.0


def _clamp_to_fp16_range():
    """A module pass replacing float32 constants that hold finite values beyond fp16's range."""
    import numpy as np
    from tvm import relax

    clamped = []

    @relax.expr_functor.mutator
    class Clamp(relax.PyExprMutator):
        def visit_generic_const_(self, const):  # Relax constants are GenericConst in 0.27
            if str(const.value.dtype) != "float32":
                return const
            values = const.value.numpy()
            beyond = np.isfinite(values) & (np.abs(values) > FP16_MAX)
            if not beyond.any():
                return const
            clamped.append(int(beyond.sum()))
            return relax.const(np.where(beyond, np.sign(values) * FP16_MAX, values), "float32")

    def report():
        if clamped:
            log.info("fp16: %d value(s) in %d constant(s) beyond fp16's range clamped to +-%g",
                     sum(clamped), len(clamped), FP16_MAX)

    return _each_relax_function("ClampToFp16Range", Clamp, report)


# Ops as exact or as safe in fp16 as PyTorch's .half() runs them: TVM's layer norm computes its
# statistics in fp32 for fp16 data. Reductions, softmax, exp and power are not here: they stay fp32.
FP16_SAFE_OPS = frozenset(f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "negative", "maximum", "minimum", "where",
    "reshape", "permute_dims", "expand_dims", "squeeze", "strided_slice", "take", "broadcast_to",
    "erf", "tanh", "sigmoid", "nn.relu", "nn.gelu", "nn.silu", "nn.layer_norm"))


def _fp16_activations():
    """A module pass: after mixed precision, an fp32 result of an FP16_SAFE_OPS op whose float
    inputs are all fp16 (or constants, model inputs, or fp32 casts of fp16 values) is computed in
    fp16 and widened only where an fp32 consumer needs it; a cast of it back to fp16 becomes the
    fp16 value. Other fp32 values (a reduction's result) keep their op in fp32."""
    import numpy as np
    import tvm
    from tvm import relax

    astype = tvm.ir.Op.get("relax.astype")
    safe = {tvm.ir.Op.get(name) for name in FP16_SAFE_OPS}

    def dtype_of(expr):
        return getattr(expr.ty, "dtype", None) if isinstance(expr.ty, relax.TensorType) else None

    @relax.expr_functor.mutator
    class Narrow(relax.PyExprMutator):
        def half(self, expr):
            """expr as an fp16 value, None when it is an fp32 value not available in fp16;
            non-float arguments (indices, shapes, masks) are returned as they are."""
            dtype = dtype_of(expr)
            if dtype != "float32":
                return expr
            if isinstance(expr, tvm.ir.expr.Constant):
                values = expr.value.numpy()
                if (np.abs(values[np.isfinite(values)]) > FP16_MAX).any():
                    return None
                return relax.const(values.astype(np.float16), "float16")
            if not isinstance(expr, relax.Var):
                return None
            if expr in self.params:  # a model input: cast once, as the first layer would
                if expr not in self.cast_params:
                    self.cast_params[expr] = self.builder_.emit(relax.op.astype(expr, "float16"))
                return self.cast_params[expr]
            bound = self.lookup_binding(expr)
            if (isinstance(bound, relax.Call) and bound.op == astype
                    and dtype_of(bound.args[0]) == "float16"):
                return bound.args[0]
            return None

        def visit_function_(self, func):
            self.params, self.cast_params = set(func.params), {}
            return super().visit_function_(func)

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op == astype and str(call.attrs.dtype) == "float16":
                narrow = self.half(call.args[0])
                return call if narrow is None else narrow
            if call.op not in safe or dtype_of(call) != "float32":
                return call
            # variables first: a constant is only converted when the op can narrow
            if any(self.half(a) is None for a in call.args
                   if not isinstance(a, tvm.ir.expr.Constant)):
                return call
            args = [self.half(a) for a in call.args]
            if any(a is None for a in args):
                return call
            narrow = self.builder_.emit(relax.Call(call.op, args, call.attrs, call.ty_args))
            return relax.op.astype(narrow, "float32")

    return _each_relax_function("Fp16Activations", Narrow)


def _integer_powers():
    """A module pass replacing power(x, c), c a constant 2, 3 or 4, by multiplications."""
    import tvm
    from tvm import relax

    from .kernels.library.partition import scalar_constant

    power = tvm.ir.Op.get("relax.power")

    @relax.expr_functor.mutator
    class Products(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != power:
                return call
            exponent = call.args[1]
            if isinstance(exponent, relax.Var):
                exponent = self.lookup_binding(exponent) or exponent
            n = scalar_constant(exponent)
            if n not in (2.0, 3.0, 4.0):
                return call
            x = call.args[0]
            square = self.builder_.emit(relax.op.multiply(x, x))
            if n == 2.0:
                return square
            return relax.op.multiply(square, x if n == 3.0 else square)

    return _each_relax_function("IntegerPowers", Products)


def _fast_math():
    """A module pass lowering fp32 exp, erf, tanh and softmax calls to TOPI's fast versions."""
    import tvm
    from tvm import relax, topi

    fast = {"relax.exp": topi.fast_exp, "relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh}

    @relax.expr_functor.mutator
    class Fast(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
            if name not in (*fast, "relax.nn.softmax") or str(call.ty.dtype) != "float32":
                return call
            if name == "relax.nn.softmax":
                return self.builder_.call_te(topi.nn.fast_softmax, call.args[0],
                                             int(call.attrs.axis))
            return self.builder_.call_te(fast[name], call.args[0])

    return _each_relax_function("FastMath", Fast)


def _packed_matmul_weights(target):
    """A module pass replacing matmuls that `packed_matmul.applies` to by matmuls of the weights
    packed into panels."""
    from .kernels import cpu_simd, packed_matmul

    lanes = cpu_simd.vector_lanes(target)

    def pack(bb, call, weight):
        if not packed_matmul.applies(call, weight, lanes):
            return None
        return packed_matmul.emit(bb, call.args[0],
                                  packed_matmul.panels(weight.value.numpy(), lanes))

    return _rewrite_by_weights("PackMatmulWeights", "relax.matmul", pack)


def _winograd():
    """A module pass replacing packed 3x3 conv2d calls that `winograd.applies` to by Winograd's
    three kernels."""
    from .kernels import winograd

    def transform(bb, call, weight):
        if not winograd.applies(call, weight):
            return None
        return winograd.emit(bb, call.args[0], winograd.transformed_weights(weight.value.numpy()),
                             call.attrs.padding, call.ty.shape)

    return _rewrite_by_weights("Winograd", "relax.nn.conv2d", transform)


def _rewrite_by_weights(name: str, op_name: str, rewrite):
    """A module pass calling rewrite(builder, call, weights) on each `op_name` call, its weights
    (second argument) resolved through their binding; a None result keeps the call."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == op_name):
                return call
            weight = call.args[1]
            if isinstance(weight, relax.Var):
                weight = self.lookup_binding(weight)
            rewritten = rewrite(self.builder_, call, weight)
            return call if rewritten is None else rewritten

    return _each_relax_function(name, Rewrite)


def _variadic_as_binary():
    """A module pass replacing reduce(stack([broadcast_to(x_i), ...], axis=0), axis=0) for sum,
    max, min and mean (the importer's Sum/Max/Min/Mean) by a chain of binary ops on the x_i."""
    import tvm
    from tvm import relax

    import tvm_ffi

    binary = {"relax.sum": relax.op.add, "relax.max": relax.op.maximum,
              "relax.min": relax.op.minimum, "relax.mean": relax.op.add}
    stack, broadcast_to = tvm.ir.Op.get("relax.stack"), tvm.ir.Op.get("relax.broadcast_to")

    @relax.expr_functor.mutator
    class Chain(relax.PyExprMutator):
        def bound(self, expr, op):
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            return expr if isinstance(expr, relax.Call) and expr.op == op else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
            if (name not in binary or call.attrs.keepdims or call.attrs.axis is None
                    or [int(a) for a in call.attrs.axis] != [0]):
                return call
            stacked = self.bound(call.args[0], stack)
            if stacked is None or int(stacked.attrs.axis) != 0:
                return call
            fields = stacked.args[0]
            if isinstance(fields, relax.Var):
                fields = self.lookup_binding(fields)
            if not isinstance(fields, relax.Tuple):
                return call
            operands = [self.bound(f, broadcast_to) for f in fields.fields]
            if any(o is None for o in operands):
                return call
            result = operands[0].args[0]
            for operand in operands[1:]:
                result = self.builder_.emit(binary[name](result, operand.args[0]))
            if name == "relax.mean":
                result = self.builder_.emit(
                    relax.op.divide(result, relax.const(len(operands), call.ty.dtype)))
            if tvm_ffi.structural_equal(result.ty.shape, call.ty.shape):
                return result
            return relax.op.broadcast_to(result, call.ty.shape)  # a lone operand, say

    return _each_relax_function("VariadicAsBinary", Chain)


def _each_relax_function(name: str, mutator, after=lambda: None):
    """A module pass running `mutator` (a relax.PyExprMutator class) over every Relax function,
    then `after()`. Kernels the mutator emits (`builder_.call_te`) join the module."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def run(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter = mutator(mod)
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
                mod = rewriter.builder_.get()
        after()
        return mod

    return run


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
                from .errors import first_line

                line = f"{gp.name} failed in TVM ({first_line(e)}): {gp.skipped_on_failure}"
                log.warning("%s", line)
                if skipped is not None:
                    skipped.append(line)
                continue
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


def op_names(mod, function="main") -> list[str]:
    """Relax operator names called in a function (main by default), e.g. relax.nn.batch_norm."""
    import tvm
    from tvm import relax

    names = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod[function], visit)
    return names
