"""The fp16 passes around TVM's ToMixedPrecision (`--precision fp16`): before it, constants
beyond fp16's range are clamped (a mask of float32's most negative value would become -inf, and
0 x -inf is NaN); after it, activations stay fp16 between layers as PyTorch's .half() keeps them,
where ToMixedPrecision alone widens every elementwise result back to fp32.
"""

from __future__ import annotations

import logging

from .relax_helpers import each_relax_function

log = logging.getLogger(__name__)

FP16_MAX = 65504.0


def clamp_to_fp16_range():
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

    return each_relax_function("ClampToFp16Range", Clamp, report)


# Ops as exact or as safe in fp16 as PyTorch's .half() runs them: TVM's layer and RMS norms
# compute their statistics in fp32 for fp16 data. Reductions, softmax, exp and power are not
# here: they stay fp32.
FP16_SAFE_OPS = frozenset(f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "negative", "maximum", "minimum", "where",
    "reshape", "permute_dims", "expand_dims", "squeeze", "strided_slice", "take", "broadcast_to",
    "erf", "tanh", "sigmoid", "nn.relu", "nn.gelu", "nn.silu", "nn.layer_norm", "nn.rms_norm"))


def fp16_activations():
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

    return each_relax_function("Fp16Activations", Narrow)
