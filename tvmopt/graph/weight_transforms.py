"""CPU passes that transform constant weights once, at build time, for a faster kernel:

- pack-matmul-weights: fp32 matmuls by constant weights read them packed into panels of one SIMD
  vector's width (`tvmopt.kernels.packed_matmul`);
- winograd: fp32 3x3 stride-1 packed convs as Winograd F(4x4, 3x3), weights pre-transformed
  (`tvmopt.kernels.winograd`).

The kernels modules decide where each applies and emit the calls; these passes find the calls and
resolve their weights.
"""

from __future__ import annotations

from .relax_helpers import each_relax_function


def packed_matmul_weights(target):
    """A module pass replacing matmuls that `packed_matmul.applies` to by matmuls of the weights
    packed into panels."""
    from ..kernels import cpu_simd, packed_matmul

    lanes = cpu_simd.vector_lanes(target)

    def pack(bb, call, weight):
        if not packed_matmul.applies(call, weight, lanes):
            return None
        return packed_matmul.emit(bb, call.args[0],
                                  packed_matmul.panels(weight.value.numpy(), lanes))

    return _rewrite_by_weights("PackMatmulWeights", "relax.matmul", pack)


def winograd_convs():
    """A module pass replacing packed 3x3 conv2d calls that `winograd.applies` to by Winograd's
    three kernels."""
    from ..kernels import winograd

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

    return each_relax_function(name, Rewrite)
