"""Passes that rewrite arithmetic TVM imports or lowers poorly into arithmetic it compiles well:

- variadic-as-binary: ONNX's Sum/Max/Min/Mean of several tensors, imported as broadcast copies
  stacked and reduced, become a chain of binary ops (no copies, and fusion and layout conversion
  see through them);
- integer-powers: x**2, x**3, x**4 become products (CUDA's fast math makes pow() of a negative
  base NaN);
- rms-norms: RMSNorm as exporters write it out op by op (Llama, T5, Qwen: the mean of squares, a
  square root and a divide, then the weight) becomes one `nn.rms_norm` (statistics in fp32 for
  fp16 data, one kernel, and the kernel library's);
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


def rms_norms():
    """A module pass replacing w * (x / sqrt(mean(x * x, -1) + eps)), and the same with
    x * rsqrt(...) or x * (1 / sqrt(...)), operands of multiplies in either order, by
    nn.rms_norm(x, w, -1, eps), where w is a vector of x's last dimension. Run it after
    integer-powers (x**2 as a product)."""
    import tvm
    from tvm import relax

    import tvm_ffi

    ops = {name: tvm.ir.Op.get(f"relax.{name}")
           for name in ("multiply", "divide", "add", "sqrt", "rsqrt", "mean")}

    @relax.expr_functor.mutator
    class Fold(relax.PyExprMutator):
        def bound(self, expr, name):
            """The call of relax.`name` that `expr` is (or is bound to, through aliases), else
            None."""
            while isinstance(expr, relax.Var) and self.lookup_binding(expr) is not None:
                expr = self.lookup_binding(expr)
            return expr if isinstance(expr, relax.Call) and expr.op == ops[name] else None

        def inverse_root(self, expr):
            """(x, eps) where expr is 1 / sqrt(mean(x * x, -1) + eps) (as rsqrt or 1 / sqrt)."""
            root = self.bound(expr, "rsqrt")
            if root is None:
                divide = self.bound(expr, "divide")
                if divide is None or scalar_constant(divide.args[0]) != 1.0:
                    return None
                root = self.bound(divide.args[1], "sqrt")
            return None if root is None else self.mean_square(root.args[0])

        def mean_square(self, expr):
            """(x, eps) where expr is mean(x * x, last axis, keepdims) + eps."""
            add = self.bound(expr, "add")
            if add is None:
                return None
            for mean, eps in (add.args, add.args[::-1]):
                mean, eps = self.bound(mean, "mean"), scalar_constant(eps)
                if mean is None or eps is None or not mean.attrs.keepdims:
                    continue
                square = self.bound(mean.args[0], "multiply")
                rank = len(mean.args[0].ty.shape.values)
                if (square is not None and square.args[0].same_as(square.args[1])
                        and mean.attrs.axis is not None
                        and [int(a) % rank for a in mean.attrs.axis] == [rank - 1]):
                    return square.args[0], eps
            return None

        def normalised(self, expr):
            """(x, eps) where expr is x divided by its root mean square."""
            divide = self.bound(expr, "divide")
            if divide is not None:
                root = self.bound(divide.args[1], "sqrt")
                found = None if root is None else self.mean_square(root.args[0])
                return found if found is not None and found[0].same_as(divide.args[0]) else None
            multiply = self.bound(expr, "multiply")
            if multiply is None:
                return None
            for x, scale in (multiply.args, multiply.args[::-1]):
                found = self.inverse_root(scale)
                if found is not None and found[0].same_as(x):
                    return found
            return None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != ops["multiply"]:
                return call
            for normed, weight in (call.args, call.args[::-1]):
                found = self.normalised(normed)
                if found is None:
                    continue
                x, eps = found
                last, vector = x.ty.shape.values[-1], weight.ty.shape.values
                if (len(vector) == 1 and tvm_ffi.structural_equal(vector[0], last)
                        and weight.ty.dtype == x.ty.dtype):
                    return relax.op.nn.rms_norm(x, weight, axes=[-1], epsilon=eps)
            return call

    return each_relax_function("RMSNorms", Fold)


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
