"""Helpers for writing and checking Relax passes, shared by the graph passes and the kernel
library's partitioning.

Like the rest of the graph stage, this module imports TVM only inside its functions, and it
imports nothing else from tvmopt: `tvmopt.kernels.library` imports it, and the pipeline imports
the kernel library, so a module-level import here would close a cycle.
"""

from __future__ import annotations


def each_relax_function(name: str, mutator, after=lambda: None):
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


def well_formed_or_raise(convert, name):
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


def scalar_constant(expr) -> float | None:
    """The value of a one-element Relax constant, else None."""
    import tvm

    if not isinstance(expr, tvm.ir.expr.Constant) or expr.value.numpy().size != 1:
        return None
    return float(expr.value.numpy().reshape(()))


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
