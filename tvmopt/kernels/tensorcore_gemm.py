# Adapted from Apache TVM's DLight MatmulTensorization (python/tvm/s_tir/dlight/gpu/matmul.py),
# Licensed to the Apache Software Foundation (ASF) under the Apache License, Version 2.0.
"""Default tensor-core schedule for fp16 GEMMs and convs whose grid DLight leaves starved.

DLight's tensor-core rule always tiles 128x128 per thread block and skips any GEMM with a
dimension <= 64. At batch 1 that is most of a network: BERT-base's projections (M=128, N=768) run
as 6 blocks on a 132-SM H100 (158 us for the FFN's 0.6 GFLOP), ResNet-50's 7x7 stage (M=49) as
4. This is the same schedule (wmma 16x16x16, shared-memory staging, fp32 accumulation,
software pipelining) with the block tile chosen per GEMM: the largest tile that still gives
every SM a block, else the one that gives the most blocks, so padding and idle SMs are traded
for each shape instead of fixed.
"""

from __future__ import annotations

import math

# Thread-block tiles as (warps along M, wmma tiles per warp along M, warps along N, tiles per
# warp along N); a block covers 16*wm*tm x 16*wn*tn of the output. Largest first.
TILES = ((4, 2, 4, 2), (2, 2, 4, 2), (4, 2, 2, 2), (2, 2, 2, 2), (2, 1, 2, 2), (1, 2, 2, 1),
         (1, 1, 2, 1))
SMALLEST_DIM = 16  # below this (GEMV-like, M=1 at batch 1) tensor cores waste too much
# Blocks that keep a data-centre GPU busy: A100 has 108 SMs, H100 132 (a second partial wave
# costs less than idle SMs). TVM's CUDA target carries no SM count.
FILL_BLOCKS = 108


def block_tile(m: int, n: int, multiprocessors: int = FILL_BLOCKS) -> tuple[int, int, int, int]:
    """The tile for an MxN output: the largest that still gives every SM a block, else the one
    with the most blocks (the least padded among equals)."""
    def blocks(t):
        return math.ceil(m / (16 * t[0] * t[1])) * math.ceil(n / (16 * t[2] * t[3]))

    filling = [t for t in TILES if blocks(t) >= multiprocessors]
    if filling:
        return filling[0]
    return max(TILES, key=lambda t: (blocks(t), -_padding(m, n, t)))


def _padding(m: int, n: int, t) -> int:
    bm, bn = 16 * t[0] * t[1], 16 * t[2] * t[3]
    return math.ceil(m / bm) * bm * math.ceil(n / bn) * bn - m * n


class TensorCoreGemm:
    """A DLight-style rule: `apply(func, target, tunable)` -> Schedule or None."""

    def apply(self, func, target, _tunable):  # noqa: C901 - one schedule, step by step
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight.analysis import get_root_block
        from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain,
                                                 auto_inline_producers, check_sm_version,
                                                 get_in_out_dtypes, get_index_map,
                                                 get_reduction_blocks)

        if target.kind.name != "cuda" or check_sm_version(str(target.attrs.get("arch", ""))) < 70:
            return None
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if not reductions:
            return None
        main_block = reductions[0]
        block_stmt = sch.get(main_block)
        index_maps = get_index_map(block_stmt)
        if not index_maps:
            return None
        in_dtype, out_dtype = get_in_out_dtypes(block_stmt)
        if in_dtype != "float16" or out_dtype not in ("float32", "float16"):
            return None
        # The GEMM it is, whatever its layout: [batch, M, N, K].
        extents = index_maps[0].map_shape([iv.dom.extent for iv in block_stmt.iter_vars])
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None  # dynamic shapes: DLight's own rules
        _, m, n, k = (int(e) for e in extents)
        if min(m, n, k) < SMALLEST_DIM:
            return None
        wm, tm, wn, tn = block_tile(m, n)
        warp_size, vector_size, micro = 32, 4, 16
        num_warps = wm * wn

        # Normalise to C[S, I, J] += A[S, I, K] * B[S, J, K] and pad to whole tiles.
        reindex_a = sch.reindex(main_block, ("read", 0))
        reindex_b = sch.reindex(main_block, ("read", 1))
        reindex_c = sch.reindex(main_block, ("write", 0))
        matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main_block))
        sch.transform_layout(reindex_a, ("write", 0), a_map)
        sch.transform_layout(reindex_b, ("write", 0), b_map)
        sch.transform_layout(reindex_c, ("read", 0), c_map)
        sch.transform_block_layout(main_block, matmul_map)
        k_tiles = 4
        sch.pad_einsum(main_block, [1, micro * wm * tm, micro * wn * tn, micro * k_tiles])

        batch, i, j, kk = sch.get_loops(main_block)
        i, i_inner = sch.split(i, factors=[None, micro])
        j, j_inner = sch.split(j, factors=[None, micro])
        kk, k_inner = sch.split(kk, factors=[None, micro])
        sch.reorder(i, j, kk, i_inner, j_inner, k_inner)
        block_inner = main_block
        block_outer = sch.blockize(i_inner)

        i0, i1, i2, i3 = sch.split(i, factors=[None, 1, wm, tm])
        j0, j1, j2, j3 = sch.split(j, factors=[1, None, wn, tn])
        k0, k1 = sch.split(kk, [None, k_tiles])
        sch.annotate(k0, "software_pipeline_order", [0, 3, 1, 4, 5, 2, 6])
        sch.annotate(k0, "software_pipeline_stage", [0, 0, 0, 0, 0, 1, 1])
        sch.annotate(k1, "software_pipeline_order", [0, 1, 2])
        sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
        sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)
        sch.bind(batch, "blockIdx.z")
        sch.bind(sch.fuse(i0, j0), "blockIdx.x")
        sch.bind(sch.fuse(i1, j1), "blockIdx.y")
        thread_idy = sch.fuse(j2, i2)
        sch.bind(thread_idy, "threadIdx.y")

        def fetch_to_shared(block, idx):
            block_read = sch.cache_read(block, idx, "shared.dyn")
            sch.compute_at(block_read, k0)
            fused = sch.fuse(*sch.get_loops(block_read)[-2:])
            _, f_1, f_2, f_3 = sch.split(fused, factors=[None, num_warps, warp_size, vector_size])
            sch.bind(f_2, "threadIdx.x")
            sch.bind(f_1, "threadIdx.y")
            sch.vectorize(f_3)
            sch.storage_align(block_read, 0, axis=-2, factor=16, offset=8)
            sch.annotate(block_read, "tirx.manifest_shared_memory_local_stage", 1)
            sch.annotate(block_read, "double_buffer_scope", 0)
            return block_read

        auto_inline_producers(sch, fetch_to_shared(block_outer, 0))
        auto_inline_producers(sch, fetch_to_shared(block_outer, 1))
        a_frag = sch.cache_read(block_outer, 0, "wmma.matrix_a")
        b_frag = sch.cache_read(block_outer, 1, "wmma.matrix_b")
        sch.compute_at(a_frag, k1)
        sch.compute_at(b_frag, k1)
        to_global = sch.cache_write(block_outer, 0, "shared.dyn")
        sch.storage_align(to_global, 0, -2, 16, 4)
        store = sch.cache_write(block_outer, 0, "wmma.accumulator")
        sch.reverse_compute_at(store, thread_idy)
        sch.reverse_compute_at(to_global, thread_idy)
        si, sj = sch.get_loops(store)[-2:]
        si0, si1 = sch.split(si, factors=[None, micro])
        sj0, sj1 = sch.split(sj, factors=[None, micro])
        sch.reorder(si0, sj0, si1, sj1)
        init_inner = sch.get_child_blocks(sch.decompose_reduction(block_outer, k0))[0]

        # Only now, for a kernel it tensorizes: registering TVM's intrinsics (its import) takes
        # tens of seconds, spent once per process and never by an fp32 or GEMM-free model, and
        # through register_tensor_intrinsics, which spares the parser's module scans.
        from ..database.metaschedule import register_tensor_intrinsics

        register_tensor_intrinsics()
        from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

        # fp32 accumulation when the kernel accumulates in fp32 (tvmopt's mixed precision does).
        intrins = get_wmma_intrin_group(load_scope="shared.dyn", store_scope="shared.dyn",
                                        in_dtype="float16", out_dtype=out_dtype, trans_b=True)
        try:
            for frag, load in ((a_frag, "load_a"), (b_frag, "load_b")):
                fi, fj = sch.get_loops(frag)[-2:]
                fi0, fi1 = sch.split(fi, factors=[None, micro])
                fj0, fj1 = sch.split(fj, factors=[None, micro])
                sch.reorder(fi0, fj0, fi1, fj1)
                sch.unroll(fi0)
                sch.unroll(fj0)
                sch.tensorize(fi1, intrins[load])
            sch.tensorize(sch.get_loops(init_inner)[-2], intrins["init"])
            sch.tensorize(sch.get_loops(store)[-2], intrins["store"])
            sch.tensorize(sch.get_loops(block_inner)[-3], intrins["compute"])
        except Exception:  # noqa: BLE001 - a shape the intrinsics do not cover: next rule
            return None
        auto_inline_consumer_chain(sch, to_global)
        fused = sch.fuse(*sch.get_loops(to_global)[-2:])
        _, f1, f2 = sch.split(fused, factors=[None, warp_size, vector_size])
        sch.bind(f1, "threadIdx.x")
        sch.vectorize(f2)
        return sch
