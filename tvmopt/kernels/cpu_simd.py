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


def parallel_vector(sch, loops, lanes: int) -> bool:
    """Vectorise the innermost loop by a width that divides it, run the rest in parallel."""
    if not loops:
        return False
    size = iterations(sch, loops)
    width = largest_divisor(extent(sch, loops[-1]), lanes)
    outer = list(loops[:-1])
    changed = False
    if width > 1:
        rest, vector = sch.split(loops[-1], [None, width])
        outer.append(rest)
        sch.vectorize(vector)
        changed = True
    else:
        outer.append(loops[-1])
    if size >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        changed = True
    return changed
