"""Q, K and V projections of one tensor by constant weights as one GEMM (three launches of a
768-wide GEMM per layer in BERT, CLIP and Llama become one of 2304).

Branches `matmul(x, W_i)`, each maybe followed by a cast and a constant bias add, that read the
same `x`, have the same structure and whose results only feed reshapes (the head split of Q, K
and V) become one `matmul(x, [W_1 | W_2 | ...])` (and one cast and one add of the biases side by
side), the weights concatenated at build time; each branch's result is its column slice of
that, which attention reads in place (`attention_forms`: a packed projection, as GPT-2 writes
it). A projection feeding an activation (a gated MLP's gate) is left alone: the activation is
its own GEMM's epilogue. TVM's own CombineParallelMatmul combines only weights that are function
parameters, not the constants an imported model's weights are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import relax_match


@dataclass
class Branch:
    weight: np.ndarray  # [K, N] of matmul(x, W)
    cast: str | None  # the dtype a cast right after the matmul makes of it
    bias: np.ndarray | None  # [N], added after the matmul (and cast)
    end: object  # the Var of the branch's last binding: what its users read


def combine_projections(mod):
    """`mod` with main's parallel projections combined (see the module's docstring)."""
    from tvm import relax

    bindings, consumers = relax_match.uses(mod["main"])
    groups: dict[tuple, list[Branch]] = {}
    for var, value in bindings.items():
        branch = _branch(var, value, bindings, consumers)
        if branch is not None:
            signature = (value.args[0], str(value.attrs.out_dtype), branch.weight.dtype.str,
                         branch.weight.shape[0], branch.cast, branch.bias is not None,
                         None if branch.bias is None else branch.bias.dtype.str)
            groups.setdefault(signature, []).append(branch)
    replacements = {}
    for (x, out_dtype, *_), branches in groups.items():
        if len(branches) < 2:
            continue
        combined: dict = {}

        def whole(builder, remap, x=x, out_dtype=out_dtype, branches=branches, combined=combined):
            """The combined projection, emitted where the first branch ends."""
            if "y" not in combined:
                weight = np.concatenate([b.weight for b in branches], axis=1)
                y = builder.emit(relax.op.matmul(remap(x), relax.const(weight),
                                                 out_dtype=out_dtype))
                if branches[0].cast:
                    y = builder.emit(relax.op.astype(y, branches[0].cast))
                if branches[0].bias is not None:
                    bias = np.concatenate([b.bias for b in branches])
                    y = builder.emit(relax.op.add(y, relax.const(bias)))
                combined["y"] = y
            return combined["y"]

        start = 0
        for b in branches:
            width = b.weight.shape[1]
            replacements[b.end] = (
                lambda builder, remap, whole=whole, start=start, width=width:
                relax.op.strided_slice(whole(builder, remap), axes=[-1], begin=[start],
                                       end=[start + width]))
            start += width
    return relax_match.rewrite_bindings(mod, replacements) if replacements else mod


def _branch(var, value, bindings, consumers) -> Branch | None:
    """The projection starting at `var`, a 2-D constant weight's matmul, else None."""
    import tvm

    if not (relax_match.is_call(value, "relax.matmul")
            and isinstance(value.args[1], tvm.ir.expr.Constant)):
        return None
    weight = value.args[1].value.numpy()
    if weight.ndim != 2:
        return None
    end, cast, bias = var, None, None
    following, use = relax_match.sole_use(end, bindings, consumers)
    if relax_match.is_call(use, "relax.astype"):
        end, cast = following, str(use.attrs.dtype)
        following, use = relax_match.sole_use(end, bindings, consumers)
    if relax_match.is_call(use, "relax.add"):
        args = use.args
        other = args[1] if args[0].same_as(end) else args[0]
        if (isinstance(other, tvm.ir.expr.Constant) and other.value.numpy().shape
                == (weight.shape[1],)):
            end, bias = following, other.value.numpy()
    readers = consumers.get(end, [])
    if not readers or not all(_splits_heads(r, weight.shape[1], bindings, consumers)
                              for r in readers):
        return None
    return Branch(weight, cast, bias, end)


def _splits_heads(var, width: int, bindings, consumers) -> bool:
    """Whether `var` is a reshape of a projection's [..., width] result into [..., heads, dim]
    (maybe after a reshape that keeps the width: a 2-D GEMM's result back to 3-D)."""
    while var in bindings and relax_match.is_call(bindings[var], "relax.reshape"):
        shape = relax_match.static_shape(var)
        if shape[-1] < width:
            return len(shape) >= 2 and shape[-2] * shape[-1] == width
        if shape[-1] != width:
            return False
        var = relax_match.sole_use(var, bindings, consumers)[0]
    return False
