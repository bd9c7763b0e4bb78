"""The untuned CPU schedule for every kernel that is not a convolution or matmul: elementwise and
data-movement kernels, and row reductions (softmax, layer norm, means).

Without it such a kernel runs as TVM's plain loop nest on one core. An injective kernel gets its
producers inlined into its output, its loops fused, the contiguous axis vectorised by the target's
SIMD width and the rest in parallel. A kernel of reductions gets each block's outermost row loop
in parallel and each elementwise block's contiguous axis vectorised. Kernels too small to pay
for waking the thread pool stay on one core.
"""

from __future__ import annotations

import logging

from .cpu_simd import PARALLEL_MIN_ELEMENTS, extent, iterations, parallel_vector, vector_lanes

log = logging.getLogger(__name__)


def schedule(func, target):
    """The traced Schedule, or None where no loop could be parallelised or vectorised (a kernel
    with dynamic shapes, or one a primitive refuses)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lanes = vector_lanes(target)
    try:
        blocks = _blocks(sch)
        if not blocks or not all(_static(sch, b) for b in blocks):
            return None
        if any(_reduces(sch, b) for b in blocks):
            changed = _rows(sch, blocks, lanes)
        else:
            changed = _injective(sch, blocks, lanes)
    except (s_tir.ScheduleError, ValueError) as e:
        log.debug("no CPU row schedule for this kernel: %s", e)
        return None
    return sch if changed else None


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _static(sch, block) -> bool:
    from tvm import tirx

    return all(isinstance(sch.get(loop).extent, tirx.IntImm) for loop in sch.get_loops(block))


def _reduces(sch, block) -> bool:
    from tvm import tirx

    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _injective(sch, blocks, lanes: int) -> bool:
    from tvm import s_tir

    for block in blocks[:-1]:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass  # kept as its own loop nest (read twice, say): still scheduled below
    changed = False
    for block in _blocks(sch):
        changed |= _in_output_order(sch, block)
        changed |= parallel_vector(sch, sch.get_loops(block), lanes)
    return changed


def _in_output_order(sch, block) -> bool:
    """Iterate a data-movement block over its output, not its input: a layout transform into
    NCHW16c then writes whole vectors instead of scattering one value per 16 (a 64x56x56 one:
    240 us as written, 27 us in output order)."""
    from tvm import tirx

    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    indices = [r.min for r in stmt.writes[0].region]
    variables = [iv.var for iv in stmt.iter_vars]
    if len(indices) == len(variables) and all(i.same_as(v) for i, v in zip(indices, variables)):
        return False
    try:
        sch.transform_block_layout(block, tirx.IndexMap(variables, indices, None))
    except (RuntimeError, ValueError) as e:  # TVM cannot invert the map (a concat's part, say)
        log.debug("kept in input order: %s", e)
        return False
    return True


def _rows(sch, blocks, lanes: int) -> bool:
    """Each block's outermost spatial loop in parallel; elementwise blocks also vectorised."""
    from tvm import tirx

    changed = False
    for block in blocks:
        loops = sch.get_loops(block)
        if not loops:
            continue
        if not _reduces(sch, block):
            changed |= parallel_vector(sch, loops, lanes)
            continue
        size = iterations(sch, loops)
        ivs = sch.get(block).iter_vars
        if len(ivs) != len(loops):
            continue  # loops and block variables no longer correspond one to one
        if (ivs[0].iter_type == tirx.IterVar.DataPar and extent(sch, loops[0]) > 1
                and size >= PARALLEL_MIN_ELEMENTS):
            sch.parallel(loops[0])
            changed = True
    return changed
