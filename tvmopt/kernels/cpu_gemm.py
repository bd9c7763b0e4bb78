"""The untuned CPU schedule for convolutions and matmuls: a register tile, vectorised along the
output's contiguous axis, the outer tiles in parallel, the epilogue fused per tile.

Without it a CPU kernel nobody tuned runs as TVM's plain loop nest (one core, scalar, the
accumulator in memory): a 56x56x64 3x3 conv took 130-288 ms on the 2-core VM. The tile is the
classic one of hand-written CPU GEMMs: a vector of outputs along the contiguous axis times up to 8
along an axis the vector operand does not depend on, so each vector load feeds
8 fused multiply-adds, with the reduction loops outside the tile so the accumulators stay in
registers. Kernels of any other shape (several reductions, non-float, dynamic shapes) return
None and stay unscheduled.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

ROWS = 8  # accumulator rows of the register tile


def vector_lanes(target, dtype_bits: int = 32) -> int:
    """Elements of `dtype_bits` in one SIMD register of the target (AVX-512: 16 fp32, NEON: 4)."""
    from tvm.target import codegen

    try:
        width = int(codegen.llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - a target LLVM does not know: assume 128-bit SIMD
        width = 128
    return max(1, width // dtype_bits)


def schedule(func, target):
    """The traced Schedule, or None when `func` is not a single float reduction with static
    shapes (or a primitive refuses it)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        anchor = _anchor(sch)
        if anchor is None:
            return None
        _tile(sch, anchor, vector_lanes(target))
    except (s_tir.ScheduleError, ValueError) as e:  # a primitive refuses this kernel's structure
        log.debug("no CPU GEMM schedule for this kernel: %s", e)
        return None
    return sch


def _anchor(sch):
    """The kernel's one reduction block over static float data, else None."""
    from tvm import tirx

    root = sch.get_sblock("root")
    reductions = [b for b in sch.get_child_blocks(root)
                  if any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    if len(reductions) != 1:
        return None
    block = sch.get(reductions[0])
    if len(block.writes) != 1 or not str(block.writes[0].source.dtype).startswith("float"):
        return None
    if not all(isinstance(iv.dom.extent, tirx.IntImm) for iv in block.iter_vars):
        return None
    return reductions[0]


def _tile(sch, anchor, lanes: int) -> None:
    from tvm import tirx

    block = sch.get(anchor)
    ivs = block.iter_vars
    loops = sch.get_loops(anchor)
    if len(loops) != len(ivs):
        raise ValueError("loops and block vars differ")
    extent = [int(iv.dom.extent) for iv in ivs]
    spatial = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.CommReduce]
    # The vector axis: the one that indexes the output's contiguous (last) dimension.
    vec = [i for i in spatial if _uses(block.writes[0].region[-1].min, ivs[i].var)]
    if len(vec) != 1 or extent[vec[0]] < 2:
        raise ValueError("no single contiguous output axis")
    v = vec[0]
    # The row axis: a spatial axis the vector-loaded operands do not depend on (a conv's output
    # channel, a matmul's row), so one vector load serves every row of the tile.
    vector_reads = [r for r in block.reads if _uses(r.region[-1].min, ivs[v].var)]
    rows = [i for i in spatial if i != v and extent[i] > 1 and not any(
        _uses(rg.min, ivs[i].var) for r in vector_reads for rg in r.region)]
    u = max(rows, key=lambda i: extent[i]) if rows else None
    # One vector wide, in a width that divides the axis (no tail to predicate). Wider tiles
    # measured far slower: LLVM spills their accumulators (a 1x1 conv: 29 ms at 28 lanes, 1.1 ms
    # at 14, AVX-512).
    width = largest_divisor(extent[v], lanes)
    v_out, v_in = sch.split(loops[v], [None, width])
    outer = [loops[i] for i in spatial if i not in (v, u)]
    if u is not None:
        height = largest_divisor(extent[u], ROWS)
        u_out, u_in = sch.split(loops[u], [None, height])
        outer.append(u_out)
        sch.reorder(*outer, v_out, *(loops[i] for i in reduce), u_in, v_in)
    else:
        u_in = None
        sch.reorder(*outer, v_out, *(loops[i] for i in reduce), v_in)
    if outer:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    _fuse_epilogue(sch, anchor, v_out)
    if u_in is not None:
        sch.unroll(u_in)
    sch.vectorize(v_in)
    sch.decompose_reduction(anchor, loops[reduce[0]])


def largest_divisor(n: int, limit: int) -> int:
    """The largest tile of at most `limit` that splits `n` evenly (no tail to predicate)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _fuse_epilogue(sch, anchor, at) -> None:
    """Inline the elementwise chain after the anchor into its last block, and compute that per
    tile, while the tile's outputs are still in cache."""
    consumers = sch.get_consumers(anchor)
    while len(consumers) == 1 and sch.get_consumers(consumers[0]):
        sch.compute_inline(consumers[0])
        consumers = sch.get_consumers(anchor)
    if len(consumers) != 1:
        return
    sch.reverse_compute_at(consumers[0], at)
    sch.vectorize(sch.get_loops(consumers[0])[-1])


def _uses(expr, var) -> bool:
    from tvm import tirx

    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))
