"""GEMMs by a constant weight whose N or K is not a multiple of 8, padded so that the library's
GEMM (`gemm.py`) runs them.

The GEMM's TMA loads read rows of 16 bytes, 8 fp16 values: a GEMM whose N or K is not a multiple
of 8 would run a TVM kernel. That is every LM head over a vocabulary such as GPT-2's (logits =
hidden @ wte^T, 128 x 50257 x 768: 120 us of GPT-2 small's 871 us on an H100 with TVM's default
schedule). Where the weight is a constant (a tied embedding is one once FoldConstant has folded
its transpose), this pass pads it with zeros at build time and writes

    y = matmul([pad](a, K to Kp), W padded to [Kp, Np], out_dtype)   Np, Kp: multiples of 8
    [y = astype(y, float16)]            the library's GEMM writes fp16
    [y = add(y, bias padded to Np)]     a constant fp16 bias of N values, fused in the epilogue
    y = strided_slice(y, last axis, 0, N)
    [y = astype(y, float32)]            where the matmul's result was fp32 (logits as the
                                        model's output): rounded to fp16 on the way, as
                                        PyTorch's .half() and ONNX Runtime's fp16 models give

so that the GEMM's patterns match the padded matmul with its bias, and the slice fuses into the
TVM kernel after it (GPT-2's: the cast of the logits to fp32). The activation is padded along K
at run time, only where K is not a multiple of 8. Zero columns and rows change no result. A GEMM
is padded only where that adds at most MAX_EXTRA_WORK to its work (GPT-2's LM head: 0.01%; a
10-class head is left alone): the padded GEMM is also what a TVM kernel runs where the build
does not pick the library's. A padded GEMM's activation or residual add runs after the slice, in
the TVM kernel that follows it, not in the GEMM's epilogue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import relax_match
from .cutlass import ALIGNMENT

log = logging.getLogger(__name__)

MAX_EXTRA_WORK = 1 / 16  # of the GEMM's multiply-adds, that the zeros may add


@dataclass(frozen=True, eq=False)
class Padding:
    """One GEMM to pad, as found: the bindings from its matmul to `last` become the padded
    GEMM and the slice."""
    a: object  # the activation [..., M, K]
    weight: np.ndarray  # [Kp, Np], zeros past K and N
    n: int
    k: int
    out_dtype: str  # the matmul's
    cast: bool  # the matmul's fp32 result is cast to fp16
    widen: bool  # ... and cast back to fp32 after the slice: it was fp32 where it was used
    bias: np.ndarray | None  # [..., Np], zeros past N
    bias_first: bool  # add(bias, y) rather than add(y, bias)
    last: object  # the variable the sliced result replaces

    def write(self, bb, remap):
        """The padded GEMM and the slice, through a block builder (the last op not emitted)."""
        from tvm import relax

        rank = len(relax_match.static_shape(self.a))
        a = remap(self.a)
        kp = self.weight.shape[0]
        if kp > self.k:
            a = bb.emit(relax.op.nn.pad(a, [0, 0] * (rank - 1) + [0, kp - self.k]))
        y = bb.emit(relax.op.matmul(a, relax.const(self.weight), out_dtype=self.out_dtype))
        if self.cast:
            y = bb.emit(relax.op.astype(y, "float16"))
        if self.bias is not None:
            bias = relax.const(self.bias)
            y = bb.emit(relax.op.add(bias, y) if self.bias_first else relax.op.add(y, bias))
        y = relax.op.strided_slice(y, axes=[rank - 1], begin=[0], end=[self.n])
        return relax.op.astype(bb.emit(y), "float32") if self.widen else y


def padded(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def canonicalize(mod):
    """`mod` with each GEMM of main that pays to pad padded, the rest as it was."""
    bindings, users = relax_match.uses(mod["main"])
    found = {}
    for var, value in bindings.items():
        if relax_match.is_call(value, "relax.matmul"):
            padding = _padding(var, value, bindings, users)
            if padding is not None:
                found[padding.last] = padding
    if not found:
        return mod
    log.debug("gemm: %d GEMM(s) padded to multiples of %d", len(found), ALIGNMENT)
    return relax_match.rewrite_bindings(mod, {last: p.write for last, p in found.items()})


def _padding(var, matmul, bindings, users) -> Padding | None:
    a, b = matmul.args
    try:
        weight = relax_match.constant_value(b, bindings)
        a_shape = relax_match.static_shape(a)
    except ValueError:
        return None
    if (weight.ndim != 2 or len(a_shape) < 2 or weight.dtype != np.float16
            or relax_match.dtype(a) != "float16"):
        return None
    (k, n), out_dtype = weight.shape, relax_match.dtype(var)
    kp, np_ = padded(k), padded(n)
    if (kp, np_) == (k, n) or kp * np_ > (1 + MAX_EXTRA_WORK) * k * n:
        return None
    if out_dtype not in ("float16", "float32"):
        return None
    last, cast, widen = var, out_dtype == "float32", False
    if cast:
        user, value = relax_match.sole_use(var, bindings, users)
        if relax_match.is_call(value, "relax.astype") and relax_match.dtype(user) == "float16":
            last = user
        else:
            widen = True
    bias, bias_first = None, False
    user, value = relax_match.sole_use(last, bindings, users)
    if not widen and relax_match.is_call(value, "relax.add"):
        bias_first = value.args[1].same_as(last)
        try:
            bias = relax_match.constant_value(value.args[0 if bias_first else 1], bindings)
        except ValueError:
            bias = None
        if (bias is not None and bias.dtype == np.float16 and bias.size == n and bias.shape[-1] == n
                and relax_match.static_shape(user) == relax_match.static_shape(last)):
            last = user
            bias = np.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(0, np_ - n)])
        else:
            bias = None
    weight = np.pad(weight, [(0, kp - k), (0, np_ - n)])
    return Padding(a, weight, n, k, out_dtype, cast, widen, bias, bias_first, last)


__all__ = ["MAX_EXTRA_WORK", "Padding", "canonicalize", "padded"]
