"""Matmuls with constant weights on CPUs: the weights packed into panels at build time.

A matmul's register tile reads, at every reduction step, a row of b x columns weights: in the
weights' own [K, N] layout consecutive steps are N floats apart, a new page every few steps for a
transformer's 3072-wide layers, and the prefetcher loses the streams. Packed into panels
[N / b, K, b] (b the SIMD lanes), each of the tile's columns reads one panel front to back. On
the 2-core AVX-512 VM, 128x768x3072 went from 144 to 215 GFLOP/s and 128x768x768 from 182 to
283 (`cpu_gemm`'s default schedule both times). This is what TVM's `layout_free_buffers` and
MetaSchedule's RewriteLayout do for tuned kernels only; as a graph rewrite the packing is done
once, in numpy at build time, for untuned and tuned kernels alike, and tuning and build see the
same kernel.
"""

from __future__ import annotations

import numpy as np


def applies(call, weight, lanes: int) -> bool:
    """fp32 matmuls of anything by a constant 2-D matrix whose columns fill whole vectors."""
    import tvm

    if not isinstance(weight, tvm.ir.expr.Constant) or str(call.ty.dtype) != "float32":
        return False
    if str(call.args[0].ty.dtype) != "float32" or weight.value.ndim != 2:
        return False
    out_dtype = call.attrs.out_dtype
    if call.args[0].ty.ndim < 2 or str(out_dtype) not in ("None", "", "void", "float32"):
        return False
    return weight.value.shape[1] % lanes == 0 and weight.value.shape[1] > lanes


def panels(weights: np.ndarray, lanes: int) -> np.ndarray:
    """[K, N] -> [N / lanes, K, lanes]."""
    k, n = weights.shape
    return np.ascontiguousarray(weights.reshape(k, n // lanes, lanes).transpose(1, 0, 2))


def emit(bb, data, packed: np.ndarray):
    from tvm import relax

    return bb.call_te(_packed_matmul, data, relax.const(packed), primfunc_name_hint="matmul")


def _packed_matmul(data, packed):
    from tvm import te

    chunks, depth, lanes = (int(d) for d in packed.shape)
    k = te.reduce_axis((0, depth), name="k")
    *outer, _ = data.shape
    return te.compute(
        (*outer, chunks * lanes),
        lambda *i: te.sum(data[(*i[:-1], k)] * packed[i[-1] // lanes, k, i[-1] % lanes], axis=k),
        name="matmul")
