"""Passes that rewrite arithmetic TVM imports or lowers poorly into arithmetic it compiles well:

- variadic-as-binary: ONNX's Sum/Max/Min/Mean of several tensors, imported as broadcast copies
  stacked and reduced, become a chain of binary ops (no copies, and fusion and layout conversion
  see through them);
- integer-powers: x**2, x**3, x**4 become products (CUDA's fast math makes pow() of a negative
  base NaN);
- fast-math (CPUs): fp32 exp, erf, tanh and softmax become TOPI's vectorising approximations.
"""

from __future__ import annotations

from .relax_helpers import each_relax_function, scalar_constant


def variadic_as_binary():
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

    return each_relax_function("VariadicAsBinary", Chain)


def integer_powers():
    """A module pass replacing power(x, c), c a constant 2, 3 or 4, by multiplications."""
    import tvm
    from tvm import relax

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

    return each_relax_function("IntegerPowers", Products)


def fast_math():
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

    return each_relax_function("FastMath", Fast)
