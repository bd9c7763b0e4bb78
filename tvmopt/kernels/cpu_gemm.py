"""The untuned CPU schedule for convolutions and matmuls: a register tile, vectorised along the
output's contiguous axis, the outer tiles in parallel, the epilogue fused per tile.

Without it a CPU kernel nobody tuned runs as TVM's plain loop nest (one core, scalar, the
accumulator in memory): a 56x56x64 3x3 conv took 130-288 ms on the 2-core VM. The tile is the
classic one of hand-written CPU GEMMs (and of oneDNN's packed convolutions): a vector of outputs
along the contiguous axis, times up to 8 rows along an axis the vector operand does not depend on
(each vector load feeds 8 fused multiply-adds), times a few columns of vectors that reuse each
broadcast scalar, as many as the register file holds. The reduction loops run outside the tile so
the accumulators stay in registers; a packed conv's input channels run innermost, unrolled, so
consecutive steps read consecutive scalars and weight vectors. An output axis that no tile near
full size divides (an attention matmul at a sequence length of 23 or 37) is padded to whole
tiles. Kernels of any other shape (several reductions, non-float, dynamic shapes) return None
and stay unscheduled.
"""

from __future__ import annotations

import logging
import math

from .cpu_simd import (innermost, largest_divisor, parallel_vector, vector_lanes,
                       vector_registers)

log = logging.getLogger(__name__)

ROWS = 8  # accumulator rows of the register tile
# Below this many multiply-adds (a few microseconds on one core) waking the thread pool costs more
# than the second core saves.
PARALLEL_MIN_MACS = 1 << 18


def schedule(func, target):
    """The traced Schedule, or None when `func` is not a single float reduction with static
    shapes (or a primitive refuses it)."""
    from tvm import s_tir

    lanes, registers = vector_lanes(target), vector_registers(target)
    for pad in (True, False):
        sch, padded = s_tir.Schedule(func), False
        try:
            anchor = _anchor(sch)
            if anchor is None:
                return None
            padding = _padding(sch.get(anchor), lanes) if pad else None
            copies = set()
            if padding:
                padded = True
                before = _names(sch, sch.get_producers(anchor))
                sch.pad_einsum(anchor, padding)
                copies = _names(sch, sch.get_producers(anchor)) - before
            _tile(sch, anchor, lanes, registers, copies)
            return sch
        except Exception as e:  # noqa: BLE001 - a padded schedule failing falls back to none
            if padded:
                log.debug("CPU GEMM schedule without padding: %s", e)
                continue
            if isinstance(e, (s_tir.ScheduleError, ValueError)):  # a primitive refuses this
                log.debug("no CPU GEMM schedule for this kernel: %s", e)
                return None
            raise
    return None


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


class _Axes:
    """The roles of a reduction block's axes in the register tile (indices into its iter_vars):
    `v` the vector axis, `u` the rows, `c` the columns (None where there is none)."""

    def __init__(self, block):
        from tvm import tirx

        self.ivs = ivs = block.iter_vars
        self.extent = extent = [int(iv.dom.extent) for iv in ivs]
        self.spatial = spatial = [i for i, iv in enumerate(ivs)
                                  if iv.iter_type == tirx.IterVar.DataPar]
        self.reduce = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.CommReduce]
        # The vector axis: the one that indexes the output's contiguous (last) dimension.
        vec = [i for i in spatial if _uses(block.writes[0].region[-1].min, ivs[i].var)]
        if len(vec) != 1 or extent[vec[0]] < 2:
            raise ValueError("no single contiguous output axis")
        self.v = v = vec[0]
        operands = [r for r in block.reads if not r.source.same_as(block.writes[0].source)]
        self.vector_reads = [r for r in operands if _uses(r.region[-1].min, ivs[v].var)]
        self.scalar_reads = [r for r in operands if r not in self.vector_reads]
        # Rows: a spatial axis the vector operands do not depend on (a packed conv's output
        # width, an NCHW conv's output channel, a matmul's row): one vector load serves every
        # row. The innermost such axis, whose scalars lie next to each other.
        rows = [i for i in spatial
                if i != v and extent[i] > 1 and not self.reads(i, self.vector_reads)]
        self.u = u = rows[-1] if rows else None
        # Columns: a second axis of vectors that reuses each broadcast scalar (a packed conv's
        # output channel blocks, an NCHW conv's output rows; else, a matmul's, more vectors of
        # the same axis).
        cols = [i for i in spatial if i not in (v, u) and extent[i] > 1
                and not self.reads(i, self.scalar_reads)]
        self.c = cols[-1] if cols else None

    def reads(self, i, regions) -> bool:
        return any(_uses(rg.min, self.ivs[i].var) for r in regions for rg in r.region)


def _padding(block, lanes: int) -> list[int] | None:
    """pad_einsum's factors where the vector axis or the rows have no divisor near a full vector
    or tile (sequence lengths such as 23 or 37, in attention's matmuls), else None. Padded, the
    operands are copied into zero-padded buffers, the tile runs on whole vectors and the
    epilogue writes back the real extents only; pad_einsum refuses blocks whose indices are not
    plain axes (packed weights, convolutions), which keep the tile that divides. Unpadded, a
    prime extent leaves a tile of one element, scalar: an attention score matmul of length 37
    (3x4 heads, 16 deep) ran in 738 us on one core, 15 us padded (36: 6 us, 40: 10 us)."""
    axes = _Axes(block)
    padding = [1] * len(axes.extent)
    for i, tile in ((axes.v, lanes), (axes.u, ROWS)):
        n = axes.extent[i] if i is not None else 0
        if n > tile and largest_divisor(n, tile) < tile // 2:
            padding[i] = tile
    if padding == [1] * len(padding) or not _einsum(block):
        return None
    # The copies read and write every operand once: worth it where each element copied feeds a
    # tile's rows of multiply-adds, not in a matrix-vector product (memory-bound either way).
    operands = [r.source for r in block.reads if not r.source.same_as(block.writes[0].source)]
    if math.prod(axes.extent) < ROWS * sum(math.prod(int(d) for d in b.shape) for b in operands):
        return None
    return padding


def _einsum(block) -> bool:
    """Whether every access of `block` is one element at plain axes or constants (what
    pad_einsum accepts; asked first, since its refusal is an exception that prints the IR)."""
    from tvm import tirx

    def plain(index) -> bool:
        return isinstance(index, tirx.IntImm) or any(index.same_as(iv.var)
                                                     for iv in block.iter_vars)

    return all(plain(r.min) and isinstance(r.extent, tirx.IntImm) and int(r.extent) == 1
               for access in (*block.reads, *block.writes) for r in access.region)


def _names(sch, blocks) -> set[str]:
    return {sch.get(b).name_hint for b in blocks}


def _tile(sch, anchor, lanes: int, registers: int, copies=frozenset()) -> None:
    """The register tile of `anchor`; `copies`: its producers that copy an operand into a padded
    buffer."""
    _parallel_producers(sch, anchor, lanes, copies)
    axes = _Axes(sch.get(anchor))
    loops = sch.get_loops(anchor)
    if len(loops) != len(axes.ivs):
        raise ValueError("loops and block vars differ")
    extent, spatial, reduce = axes.extent, axes.spatial, axes.reduce
    v, u, c = axes.v, axes.u, axes.c
    vector_reads, scalar_reads, reads = axes.vector_reads, axes.scalar_reads, axes.reads
    # One vector wide, in a width that divides the axis (no tail to predicate); accumulators
    # within the register file, the rest left for the operands (more spill: a 28-accumulator
    # tile measured 25% slower than 14 on AVX-512).
    width = largest_divisor(extent[v], lanes)
    budget = registers * 3 // 4
    height = largest_divisor(extent[u], ROWS) if u is not None else 1
    columns = extent[c] if c is not None else extent[v] // width
    across = largest_divisor(columns, max(1, budget // height))
    v_out, v_in = sch.split(loops[v], [None, width])
    tile, split_off = [], {}
    if c is None and across > 1 and height > 1:  # (a GEMV streams its matrix: no reuse)
        v_out, v_cols = sch.split(v_out, [None, across])
        tile.append(v_cols)
    for i, size in ((c, across), (u, height)):
        if i is None:
            continue  # (columns along the vector axis are split off it above)
        split_off[i], i_in = sch.split(loops[i], [None, size])
        tile.append(i_in)
    # Axes that index the activations only (an image's rows, a matmul's rows) outermost, so
    # that the parallel loop splits the image between the cores as the kernels before and after
    # do, and each core reads what it wrote: split by output channels, half of every activation
    # crossed to the other core's cache.
    order = sorted((i for i in spatial if i != v),
                   key=lambda i: (reads(i, vector_reads), i))
    outer = [split_off.get(i, loops[i]) for i in order]
    reduce_loops, inner_reduce = _packed_reduction(sch, anchor, loops, reduce, scalar_reads)
    sch.reorder(*outer, v_out, *reduce_loops, *inner_reduce, *tile, v_in)
    tasks = sch.fuse(*outer, v_out) if outer else v_out
    if math.prod(extent) >= PARALLEL_MIN_MACS:
        sch.parallel(tasks)
    _fuse_epilogue(sch, anchor, tasks)
    for loop in (*inner_reduce, *tile):
        sch.unroll(loop)
    if width > 1:  # (else an extent no vector divides that could not be padded: scalar)
        sch.vectorize(v_in)
    sch.decompose_reduction(anchor, reduce_loops[0])


def _packed_reduction(sch, anchor, loops, reduce, scalar_reads) -> tuple[list, list]:
    """(the reduction loops, the innermost one split off them). A reduction axis read as `k % b`
    in a scalar operand's innermost dimension (a packed conv's input channels) is split by b: its
    inner b steps run innermost, reading consecutive scalars and consecutive weight vectors."""
    from tvm import tirx

    block = sch.get(anchor)
    reduce_loops = [loops[i] for i in reduce]
    for n, i in enumerate(reduce):
        var = block.iter_vars[i].var
        for read in scalar_reads:
            last = read.region[-1].min
            if (isinstance(last, tirx.FloorMod) and last.a.same_as(var)
                    and isinstance(last.b, tirx.IntImm)):
                reduce_loops[n], inner = sch.split(loops[i], [None, int(last.b)])
                return reduce_loops, [inner]
    return reduce_loops, []


def _parallel_producers(sch, anchor, lanes: int, copies=frozenset()) -> None:
    """The blocks before the anchor (a conv's padding, the copies into padded operands) in
    parallel and vectorised too."""
    for producer in sch.get_producers(anchor):
        parallel_vector(sch, sch.get_loops(producer), lanes,
                        fuse=sch.get(producer).name_hint in copies)


def _fuse_epilogue(sch, anchor, at) -> None:
    """Inline the elementwise chain after the anchor into its last block, and compute that per
    tile, while the tile's outputs are still in cache, vectorised along the tile's row."""
    consumers = sch.get_consumers(anchor)
    while len(consumers) == 1 and sch.get_consumers(consumers[0]):
        sch.compute_inline(consumers[0])
        consumers = sch.get_consumers(anchor)
    if len(consumers) != 1:
        return
    sch.reverse_compute_at(consumers[0], at)
    loops = sch.get_loops(consumers[0])
    # Only a loop of the tile's own, innermost, along the output's contiguous axis. Where the
    # tile has come down to one element (an extent no vector width divides, such as a sequence
    # length of 37, on both axes) its loops are gone and the last loop is `at`, the tasks'
    # loop around the whole kernel, reduction included: vectorised, that was thousands of lanes
    # through the reduction, and a build that never finished.
    last = loops[-1]
    if (not sch.get(last).same_as(sch.get(at)) and innermost(sch, last)
            and int(sch.get(last).extent) > 1 and _vector_row(sch, last)):
        sch.vectorize(last)


def _vector_row(sch, loop) -> bool:
    """Whether the block directly in `loop` writes along its output's last dimension as `loop`
    steps, every step of it (no predicate on the lanes: the tail tile of a padded axis, which
    TVM would turn into one scalar copy of the block per lane)."""
    realize = sch.get(loop).body
    block = getattr(realize, "block", None)
    if block is None or len(block.writes) != 1:
        return False
    var = sch.get(loop).loop_var
    if _uses(realize.predicate, var):
        return False
    bindings = {iv.var: value for iv, value in zip(block.iter_vars, realize.iter_values)}
    last = block.writes[0].region[-1].min
    return any(_uses(value, var) for bvar, value in bindings.items() if _uses(last, bvar))


def _uses(expr, var) -> bool:
    from tvm import tirx

    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))
