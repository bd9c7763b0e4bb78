"""The graph pass that offers layers to the kernel library: every registered op's Relax patterns
are matched after mixed precision and before legalisation, so that each match becomes one fused
kernel of its own, and the op describes each match as a Layer.

TVM still compiles each match as an ordinary kernel (tuning tasks are unchanged); the module
attribute LAYERS_ATTR tells the build which kernels the library may replace and how to call it.
"""

from __future__ import annotations

import logging

from . import registry
from .op import Layer, Match

log = logging.getLogger(__name__)

LAYERS_ATTR = "tvmopt_library_layers"
_PREFIX = "tvmopt_library."


def layers(mod) -> dict[str, Layer]:
    """{kernel name: Layer} recorded by the partition pass (empty when it did not run)."""
    found = mod.attrs.get(LAYERS_ATTR, {}) if mod.attrs is not None else {}
    return {str(k): registry.layer_from_json(str(v)) for k, v in found.items()}


def partition_pass():
    """The graph pass: fold the weights' casts, group each match into a function, record it."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="PartitionKernelLibrary")
    def partition(mod, _ctx):
        ordered = registry.patterns()
        # Variants of one pattern (with and without a cast) share its name and its meaning.
        by_name = {p.name: (op, p) for op, p in ordered}
        mod = relax.transform.FoldConstant()(mod)
        for op in registry.OPS:
            mod = op.canonicalize(mod)
        mod = relax.transform.FuseOpsByPattern(
            [(_PREFIX + p.name, p.pattern, p.annotations, p.check) for _, p in ordered],
            bind_constants=False, annotate_codegen=False)(mod)
        found = {}
        call_args = _call_args(mod)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs:
                op, pattern = by_name[str(func.attrs["Composite"]).removeprefix(_PREFIX)]
                match = _match(func, pattern, call_args.get(gv.name_hint, ()))
                found[gv.name_hint] = op.layer(match).to_json()
        if found:
            log.info("kernel library: %d layer(s) can run library kernels", len(found))
            mod = mod.with_attr(LAYERS_ATTR, found)
        return mod

    return partition


def _match(func, pattern, call_args) -> Match:
    """The matched function as its op reads it: parameters by index, and each variable's value
    (the constants the match lifted into parameters, as main passes them)."""
    from tvm import relax

    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    bindings.update((p, a) for p, a in zip(func.params, call_args)
                    if not isinstance(a, relax.Var))
    return Match(pattern, {p: i for i, p in enumerate(func.params)}, bindings)


def _call_args(mod) -> dict:
    """{function name: the arguments main calls it with}."""
    from tvm import relax

    found = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            found[expr.op.name_hint] = tuple(expr.args)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found
