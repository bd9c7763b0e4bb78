"""Helpers the ops' Relax patterns and checks share: commutative adds and multiplies, static
shapes, dtypes, and scalar constants seen through the casts mixed precision leaves.

TVM's own helpers (`relax/backend/patterns.py`) build the same kind of patterns for its CUTLASS
and cuBLAS backends, but match `add(x, bias)` one way round and no cast between the anchor and
its epilogue, which is how the ONNX importer and tvmopt's mixed precision leave layers.
"""

from __future__ import annotations

from ...graph.relax_helpers import scalar_constant


def add(x, y):
    from tvm.relax.dpl.pattern import is_op

    return is_op("relax.add")(x, y) | is_op("relax.add")(y, x)


def mul(x, y):
    from tvm.relax.dpl.pattern import is_op

    return is_op("relax.multiply")(x, y) | is_op("relax.multiply")(y, x)


def leaks(context) -> bool:
    """Whether a match's intermediate values are used outside it (then it cannot be outlined)."""
    from tvm.relax.backend.utils import has_leaking_intermediate_variables

    return has_leaking_intermediate_variables(context)


def is_call(expr, name: str) -> bool:
    """Whether `expr` calls the Relax op `name` ("relax.matmul")."""
    import tvm

    return (isinstance(expr, tvm.relax.Call) and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == name)


def uses(func):
    """({Var: bound value}, {Var: [the variables whose values use it; None: the result]})."""
    from tvm import relax

    bindings, users = {}, {}

    def used_by(user):
        def visit(expr):
            if isinstance(expr, relax.Var):
                users.setdefault(expr, []).append(user)
        return visit

    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                bindings[b.var] = b.value
            relax.analysis.post_order_visit(b.value, used_by(b.var))
    relax.analysis.post_order_visit(func.body.body, used_by(None))
    return bindings, users


def sole_use(var, bindings, users):
    """(the variable, its value) of the only use of `var`, else (None, None)."""
    found = users.get(var, [])
    if len(found) != 1 or found[0] is None or found[0] not in bindings:
        return None, None
    return found[0], bindings[found[0]]


def static_shape(expr) -> tuple[int, ...]:
    """The expression's shape; ValueError where a dimension is dynamic."""
    from tvm import tirx

    shape = expr.ty.shape
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        raise ValueError("dynamic shape")
    return tuple(int(d) for d in shape.values)


def dtype(expr) -> str:
    return str(expr.ty.dtype)


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def scalar(expr, bindings) -> float | None:
    """The value of a scalar constant (seen through the variable it is bound to and a cast, as
    mixed precision leaves them), else None."""
    import tvm

    expr = bindings.get(expr, expr)
    if isinstance(expr, tvm.relax.Call) and expr.op.name == "relax.astype":
        expr = expr.args[0]
    return scalar_constant(expr)


def constant_value(expr, bindings):
    """The array of a constant (seen through the parameter or variable it is bound to)."""
    import tvm

    expr = bindings.get(expr, expr)
    if not isinstance(expr, tvm.ir.expr.Constant):
        raise ValueError("not a constant")
    return expr.value.numpy()


def close(found: float | None, value: float) -> bool:
    return found is not None and abs(found - value) <= 1e-3 * value


def consumer(bindings, expr) -> str:
    """The op name of the matched call that takes `expr` as an argument."""
    import tvm

    for value in bindings.values():
        if isinstance(value, tvm.relax.Call) and any(a.same_as(expr) for a in value.args):
            return value.op.name
    return ""


def rewrite_bindings(mod, replacements: dict):
    """`mod` with main's bindings of the variables in `replacements` ({Var: write(builder,
    remap) -> the new value, its last op not yet emitted}) bound to what each writes instead;
    bindings nothing uses any more are dropped. `remap` maps an original expression to its
    rewritten form."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class Rewriter(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            write = replacements.get(binding.var)
            if write is None:
                return super().visit_var_binding_(binding)
            value = write(self.builder_, self.visit_expr)
            if isinstance(binding.var, relax.DataflowVar):
                new = self.builder_.emit(value)
            else:
                new = self.builder_.emit_output(value)
            self.set_var_remap(binding.var, new)

    main = relax.analysis.remove_all_unused(Rewriter(mod).visit_expr(mod["main"]))
    functions = {gv: (main if gv.name_hint == "main" else f) for gv, f in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs)


# Ops computing each element of their result from the same element of their operands.
_ELEMENTWISE = {f"relax.{name}" for name in (
    "astype", "add", "subtract", "multiply", "divide", "where", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_not", "logical_and", "logical_or",
    "negative", "minimum", "maximum")}
# A constant operand that changes nothing, by op: the op's result is its other operand's,
# broadcast (transformers 5.x ands its padding mask with an all-true [batch, 1, q, k] constant).
_NEUTRAL = {"relax.logical_and": True, "relax.logical_or": False, "relax.add": 0,
            "relax.multiply": 1}


def unexpanded(expr, bindings, builder, remap, emitted: dict):
    """`expr` rewritten (through `remap`), or, where it is computed element by element and some
    of its operands only broadcast (broadcast_to(x, shape), an operand that changes nothing),
    those ops emitted on x and without that operand: the same values before the broadcast, for a
    consumer that broadcasts them alike (an exported padding mask expanded to every query, read
    once per key instead). `emitted` ({expr: emitted}) shares the ops between callers."""
    import tvm
    from tvm import relax

    if expr in emitted:
        return emitted[expr]

    def value_of(e):
        return bindings.get(e) if isinstance(e, relax.Var) else None

    def elementwise_op(value) -> bool:
        return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name in _ELEMENTWISE)

    def neutral(call):
        """The operand standing for `call` (the other one is a neutral constant), else None."""
        if len(call.args) != 2 or call.op.name not in _NEUTRAL:
            return None
        for i in (0, 1):
            try:
                c = constant_value(call.args[i], bindings)
            except ValueError:
                continue
            other = call.args[1 - i]
            if (c == _NEUTRAL[call.op.name]).all() and dtype(other) == dtype(call):
                return other
        return None

    def shrinks(e) -> bool:
        """Whether a broadcast or a neutral operand is among the elementwise ops `e` is of."""
        value = value_of(e)
        if is_call(value, "relax.broadcast_to"):
            return True
        if not elementwise_op(value):
            return False  # a leaf: taken as it is
        return neutral(value) is not None or any(shrinks(a) for a in value.args)

    if not shrinks(expr):
        return remap(expr)

    def emit(e):
        if e not in emitted:
            value = value_of(e)
            if is_call(value, "relax.broadcast_to"):
                emitted[e] = remap(value.args[0])
            elif not elementwise_op(value):
                emitted[e] = remap(e)
            elif (other := neutral(value)) is not None:
                emitted[e] = emit(other)
            else:
                emitted[e] = builder.emit(relax.Call(value.op, [emit(a) for a in value.args],
                                                     value.attrs, value.ty_args))
        return emitted[e]

    return emit(expr)
