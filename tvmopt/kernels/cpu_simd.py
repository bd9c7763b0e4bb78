"""What the CPU schedules (`cpu_gemm`, `cpu_rows`) need to know of the target's SIMD, and the
loop shape both give elementwise work: the innermost loop vectorised, the rest in parallel."""

from __future__ import annotations

import math

PARALLEL_MIN_ELEMENTS = 1 << 14  # below this, the thread pool's wake-up costs more than it saves


def vector_lanes(target, dtype_bits: int = 32) -> int:
    """Elements of `dtype_bits` in one SIMD register of the target (AVX-512: 16 fp32, NEON: 4)."""
    from tvm.target import codegen

    try:
        width = int(codegen.llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - a target LLVM does not know: assume 128-bit SIMD
        width = 128
    return max(1, width // dtype_bits)


def vector_registers(target) -> int:
    """SIMD registers of the target: 32 with AVX-512 and on AArch64, else 16 (AVX2, SSE)."""
    mtriple = str(target.attrs.get("mtriple", ""))
    return 32 if vector_lanes(target) >= 16 or mtriple.startswith("aarch64") else 16


def largest_divisor(n: int, limit: int) -> int:
    """The largest tile of at most `limit` that splits `n` evenly (no tail to predicate)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def iterations(sch, loops) -> int:
    """How many times the body of a loop nest runs."""
    return math.prod(extent(sch, loop) for loop in loops)


def innermost(sch, loop) -> bool:
    """Whether no loop runs inside `loop`. (Read off the loop's statement, not through schedule
    queries, which would enter the trace and change every baseline record's spelling.)"""
    return not _has_loop(sch.get(loop).body)


def _has_loop(stmt) -> bool:
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        return True
    if isinstance(stmt, tirx.SeqStmt):
        return any(_has_loop(s) for s in stmt.seq)
    children = (getattr(stmt, name, None) for name in
                ("block", "body", "init", "then_case", "else_case"))
    return any(_has_loop(c) for c in children if isinstance(c, tirx.Stmt))


def vectorize(sch, loop, lanes: int):
    """Vectorise `loop` by the widest vector of at most `lanes` that divides it: (the loop split
    off outside the vector, True), or (`loop`, False) where nothing is vectorised.

    Only an innermost loop is vectorised, so that a vector is always a few lanes of one
    statement: TVM vectorises whatever loop it is told to, and a loop with loops inside it (a
    tile, a reduction) becomes vectors of its whole extent through all of them, or one scalar
    copy of its body per iteration (see cpu_gemm._fuse_epilogue: builds that never finished). An
    extent no width above 1 divides (a prime) stays scalar: a predicated tail would be
    scalarised lane by lane anyway."""
    if not innermost(sch, loop):
        return loop, False
    width = largest_divisor(extent(sch, loop), lanes)
    if width <= 1:
        return loop, False
    rest, vector = sch.split(loop, [None, width])
    sch.vectorize(vector)
    return rest, True


def parallel_vector(sch, loops, lanes: int, *, fuse: bool = False) -> bool:
    """Vectorise the innermost loop by a width that divides it, run the rest in parallel; `fuse`:
    fuse the rest into one loop even where it stays serial (small copies: LLVM unrolls a nest
    of short constant loops into many copies of the body)."""
    if not loops:
        return False
    size = iterations(sch, loops)
    rest, changed = vectorize(sch, loops[-1], lanes)
    outer = [*loops[:-1], rest]
    if size >= PARALLEL_MIN_ELEMENTS or (fuse and len(outer) > 1):
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if size >= PARALLEL_MIN_ELEMENTS:
            sch.parallel(fused)
        changed = True
    return changed
