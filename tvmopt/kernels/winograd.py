"""Winograd F(4x4, 3x3) for packed CPU convolutions: 3x3, stride 1, fp32, constant weights.

A direct 3x3 conv costs 9 multiply-adds per output and input channel. Winograd computes 4x4
outputs from a 6x6 input tile as 36 independent channel GEMMs, one per point of the transformed
tile: 36 / 16 = 2.25 multiply-adds per output, a quarter, plus input and output transforms that
are additions by small constants. The conv becomes three kernels:

1. input transform: V[ci, tile, e, n, bi] = (B^T d B)[e, n] for each 6x6 input tile d;
2. GEMM: M[e, n, ko, tile, bo] = sum over input channels c of V[c // b, tile, e, n, c % b] *
   U[e, n, ko, c, bo], a packed GEMM `cpu_gemm` tiles like any other;
3. output transform: Y = A^T M A per tile, with the conv's epilogue (bias, residual, activation)
   fused after it by the fuse pass.

The weights' transform U = G g G^T is done once, at build time, in float64. The transform
matrices are TOPI's (Cook-Toom on the points 0, -1, 1, 1/2, -2, chosen for fp32 accuracy).
Each transform is two stages (rows, then columns), each one expression per point selected by
the point's loop variable: the default schedule unrolls those loops, which leaves each point its
own few nonzero terms.

Chains of four convs on the 2-core AVX-512 VM (`python -m benchmarks winograd-layers`), direct over
Winograd: 1.13x at 16 channels 64x64, 1.6-1.9x from 32 to 256 channels, 0.90x for 512 channels
at 7x7, whose transformed weights (38 MB) no longer stay in cache: see `applies`.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .packed_conv import PACKED

TILE = 4  # outputs per tile side: F(4x4, 3x3)
KERNEL = 3
ALPHA = TILE + KERNEL - 1  # input tile side
INPUT_BLOCK, OUTPUT_BLOCK = "winograd_input", "winograd_output"
# The GEMM does `tiles` multiply-adds per transformed weight, of which there are 4x a direct
# conv's: with fewer than 16 tiles (under 16x16 outputs) it waits on memory for its weights unless
# they stay in cache. ResNet-50's 512-channel 3x3 at 7x7 (38 MB of transformed weights) measured
# slower as Winograd; the small ResNet's 128-channel one at 8x8 (2.4 MB) faster.
MIN_TILES = 16
CACHED_WEIGHT_BYTES = 4 << 20
_OUT_ELEMWISE_FUSABLE = 4  # relax's OpPatternKind::kOutEWiseFusable, as conv2d's
_PACKED_KERNEL = re.compile(r"OIHW\d+i\d+o")


def matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, G) of F(TILE, KERNEL) in float64: Y = A^T [(G g G^T) * (B^T d B)] A."""
    from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

    a, b, g = _cook_toom_convolution(_interpolation_points(TILE + KERNEL - 2), TILE, KERNEL)
    return a.astype(np.float64), b.astype(np.float64), g.astype(np.float64)


def applies(call, weight) -> bool:
    """Whether a conv2d call gets Winograd: packed fp32 layouts, 3x3, stride and dilation 1,
    constant weights; an output large enough that the tiles' GEMMs do at most half the direct
    conv's multiply-adds (a 3x3 output is one 6x6 tile: no gain), and either enough tiles to
    reuse each transformed weight or transformed weights that stay in cache."""
    import tvm

    attrs = call.attrs
    if not (PACKED.fullmatch(str(attrs.data_layout))
            and _PACKED_KERNEL.fullmatch(str(attrs.kernel_layout))
            and str(attrs.out_layout) == str(attrs.data_layout)):
        return False
    if not isinstance(weight, tvm.ir.expr.Constant) or str(call.ty.dtype) != "float32":
        return False
    if str(call.args[0].ty.dtype) != "float32" or int(attrs.groups) != 1:
        return False
    out_chunks, in_chunks, kernel_h, kernel_w, in_block, out_block = weight.value.shape
    if (kernel_h, kernel_w) != (KERNEL, KERNEL):
        return False
    if any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation):
        return False
    if not all(isinstance(d, tvm.tirx.IntImm) for d in call.ty.shape.values):
        return False
    out_h, out_w = int(call.ty.shape[2]), int(call.ty.shape[3])
    tiles = math.prod(_tiles(out_h, out_w))
    if 2 * ALPHA * ALPHA * tiles > KERNEL * KERNEL * out_h * out_w:
        return False
    transformed_bytes = ALPHA * ALPHA * out_chunks * out_block * in_chunks * in_block * 4
    return tiles >= MIN_TILES or transformed_bytes <= CACHED_WEIGHT_BYTES


def transformed_weights(packed: np.ndarray) -> np.ndarray:
    """U[e, n, ko, c, bo] = (G g G^T)[e, n] for OIHW{bi}i{bo}o weights g[ko, ci, kh, kw, bi, bo],
    c = ci * bi + bi's index, in float64 and then the weights' dtype."""
    _, _, g = matrices()
    out_chunks, in_chunks, _, _, in_block, out_block = packed.shape
    u = np.einsum("ea,nb,kcabio->enkcio", g, g, packed.astype(np.float64))
    return u.reshape(ALPHA, ALPHA, out_chunks, in_chunks * in_block, out_block).astype(packed.dtype)


def emit(bb, data, weights: np.ndarray, padding, out_shape):
    """The three kernels of a packed conv of `data` ([N, Ci, H, W, bi]) with transformed weights
    `weights` (U, as `transformed_weights` gives), as bindings of `bb`; returns the output."""
    from tvm import relax

    top, left, _, _ = (int(p) for p in padding)
    out_h, out_w = int(out_shape[2]), int(out_shape[3])
    v = bb.emit_te(_input_transform, data, top, left, out_h, out_w,
                   primfunc_name_hint="winograd_input_transform")
    m = bb.emit_te(_batched_gemm, v, relax.const(weights), primfunc_name_hint="winograd_gemm")
    out = bb.call_te(_output_transform, m, int(out_shape[0]), out_h, out_w,
                     primfunc_name_hint="winograd_output_transform")
    # Fused like a conv: the epilogue joins the output transform, and the next layer's input
    # transform (injective, which would otherwise fuse in too) does not.
    kernel = out.args[0]
    bb.update_func(kernel, bb.get()[kernel].with_attr("op_pattern", _OUT_ELEMWISE_FUSABLE))
    return out


def _tiles(out_h: int, out_w: int) -> tuple[int, int]:
    return -(-out_h // TILE), -(-out_w // TILE)


def _input_transform(data, top, left, out_h, out_w):
    from tvm import te, topi

    batch, in_chunks, height, width, in_block = (int(d) for d in data.shape)
    tiles_h, tiles_w = _tiles(out_h, out_w)
    per_image = tiles_h * tiles_w
    bottom = tiles_h * TILE + KERNEL - 1 - height - top
    right = tiles_w * TILE + KERNEL - 1 - width - left
    padded = topi.nn.pad(data, (0, 0, top, left, 0), (0, 0, bottom, right, 0), name="data_pad")
    _, b, _ = matrices()

    def column_sums(ci, tile, e, j, lane):  # (B^T d)[e, j]
        image, rest = tile // per_image, tile % per_image
        row, col = rest // tiles_w * TILE, rest % tiles_w * TILE
        return _select_sum(b, e, lambda i: padded[image, ci, row + i, col + j, lane])

    shape = (in_chunks, batch * per_image, ALPHA, ALPHA, in_block)
    bt_d = te.compute(shape, column_sums, name=INPUT_BLOCK + "_rows")
    return te.compute(  # (B^T d B)[e, n]
        shape, lambda ci, tile, e, n, lane: _select_sum(
            b, n, lambda j: bt_d[ci, tile, e, j, lane]), name=INPUT_BLOCK)


def _batched_gemm(v, u):
    from tvm import te

    _, tiles, _, _, in_block = (int(d) for d in v.shape)
    _, _, out_chunks, channels, out_block = (int(d) for d in u.shape)
    c = te.reduce_axis((0, channels), name="c")
    return te.compute(
        (ALPHA, ALPHA, out_chunks, tiles, out_block),
        lambda e, n, ko, tile, lane: te.sum(
            v[c // in_block, tile, e, n, c % in_block] * u[e, n, ko, c, lane], axis=c),
        name="winograd_gemm")


def _output_transform(m, batch, out_h, out_w):
    from tvm import te

    _, _, out_chunks, tiles, out_block = (int(d) for d in m.shape)
    tiles_h, tiles_w = _tiles(out_h, out_w)
    a, _, _ = matrices()
    m_a = te.compute(  # (M A)[e, s]
        (out_chunks, tiles, ALPHA, TILE, out_block),
        lambda ko, tile, e, s, lane: _select_sum(a, s, lambda n: m[e, n, ko, tile, lane]),
        name=OUTPUT_BLOCK + "_rows")

    def output(image, ko, oh, ow, lane):  # (A^T M A)[oh % TILE, ow % TILE]
        tile = image * tiles_h * tiles_w + oh // TILE * tiles_w + ow // TILE
        return _select_sum(a, oh % TILE, lambda e: m_a[ko, tile, e, ow % TILE, lane])

    return te.compute((batch, out_chunks, out_h, out_w, out_block), output, name=OUTPUT_BLOCK)


def _select_sum(matrix: np.ndarray, point, value):
    """sum_i matrix[i, point] * value(i) as a select on `point` of each point's own sum: once
    the point's loop is unrolled only that sum is left, with its few nonzero terms."""
    from tvm import tirx

    result = tirx.const(0.0, "float32")
    for p in range(matrix.shape[1]):
        total = _weighted_sum(matrix[:, p], [value(i) for i in range(matrix.shape[0])])
        result = tirx.Select(point == p, total, result)
    return result


def _weighted_sum(coefficients, values):
    from tvm import tirx

    total = None
    for coefficient, value in zip(coefficients, values):
        if coefficient == 0:
            continue
        term = value if coefficient in (1, -1) else value * tirx.const(float(coefficient),
                                                                       "float32")
        if total is None:
            total = -term if coefficient == -1 else term
        else:
            total = total - term if coefficient == -1 else total + term
    return total if total is not None else tirx.const(0.0, "float32")


def is_transform(func) -> bool:
    """Whether a kernel is one of the Winograd transforms (with any epilogue fused in)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        return bool(_row_sums(sch, sch.get_child_blocks(sch.get_sblock("root"))))
    except s_tir.ScheduleError:
        return False  # no root block (an extern call)


def _row_sums(sch, blocks) -> list:
    return [b for b in blocks if sch.get(b).name_hint.startswith(
        (INPUT_BLOCK + "_rows", OUTPUT_BLOCK + "_rows"))]


def schedule(func, target):
    """The default schedule of a Winograd transform kernel (None for any other kernel): tiles in
    parallel, each tile's points unrolled (so each keeps only its own terms) with its row sums
    computed per tile, SIMD lanes vectorised. The output transform's fused epilogue is inlined."""
    from tvm import s_tir

    from .cpu_simd import vector_lanes

    sch = s_tir.Schedule(func)
    lanes = vector_lanes(target)
    try:
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        rows = _row_sums(sch, blocks)
        if len(rows) != 1:
            return None
        rows = rows[0]
        for block in blocks[:-1]:
            if not sch.get(block).same_as(sch.get(rows)):
                sch.compute_inline(block)  # padding read through; transform into epilogue
        last = sch.get_child_blocks(sch.get_sblock("root"))[-1]
        if sch.get(rows).name_hint.startswith(INPUT_BLOCK):
            ci, tile, e, n, lane = sch.get_loops(last)
            sch.reorder(tile, ci)
            at, points = sch.fuse(tile, ci), (e, n)
        else:
            image, ko, oh, ow, lane = sch.get_loops(last)
            tile_h, r = sch.split(oh, [None, TILE])
            tile_w, c = sch.split(ow, [None, TILE])
            sch.reorder(image, tile_h, tile_w, ko, r, c, lane)
            at, points = sch.fuse(image, tile_h, tile_w, ko), (r, c)
        sch.parallel(at)
        sch.compute_at(rows, at)
        _unroll_points(sch, *sch.get_loops(rows)[-3:], lanes)
        _unroll_points(sch, *points, lane, lanes)
    except (s_tir.ScheduleError, ValueError):
        return None
    return sch


def _unroll_points(sch, row, col, lane, lanes: int) -> None:
    from .cpu_simd import extent, largest_divisor

    sch.unroll(row)
    sch.unroll(col)
    width = largest_divisor(extent(sch, lane), lanes)
    if width > 1:
        sch.vectorize(sch.split(lane, [None, width])[1])
