// A CUTLASS 3.x Hopper GEMM (TMA loads, wgmma, warp-specialized kernels) with a fused epilogue:
// out = act(A @ B + bias + residual), fp16 in and out, fp32 accumulation.
// A is [..., M, K] row-major; B is [K, N] (cutlass::layout::RowMajor: an ONNX MatMul weight) or
// [N, K] (ColumnMajor: a Gemm transB weight, an OHWI 1x1 conv filter); a B of rank > 2 makes a
// batched GEMM over its leading dimensions. Sizes are runtime arguments: one instance serves
// every layer with the same layout, epilogue and tactic.
#pragma once
// The GEMM adapter also brings CUTLASS 2.x's GemmUniversal, which a conv kernel would match too:
// GEMMs and convolutions are separate instances.
#include "cutlass_sm90.cuh"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace tvmopt {

// The warp-specialized kernels: "cooperative" splits a tile between two consumer warp groups
// (tile M >= 128); "pingpong" gives each warp group its own tile.
struct Cooperative {
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};
struct Pingpong {
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};

template <class Tile, class Schedule, class TileScheduler, class LayoutB, class Epi>
struct GemmSm90 {
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutC = cutlass::layout::RowMajor;
  using CollectiveEpilogue = typename Epi::template Collective<
      typename Tile::Shape, typename Tile::Cluster, LayoutC, typename Schedule::Epilogue>;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, half_t, LayoutA, 8, half_t, LayoutB,
      8, float, typename Tile::Shape, typename Tile::Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Schedule::Mainloop>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<
      cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // `bias` and `residual` are null where the epilogue has none.
  static void Run(const char* symbol, tvm::ffi::TensorView a, tvm::ffi::TensorView b,
                  const tvm::ffi::TensorView* bias, const tvm::ffi::TensorView* residual,
                  tvm::ffi::TensorView workspace, tvm::ffi::TensorView out) {
    using cute::make_shape;
    constexpr bool kRowB = std::is_same_v<LayoutB, cutlass::layout::RowMajor>;
    // A rank-2 B is shared by every row of A; a batched B has its own per batch.
    const int K = a.size(a.ndim() - 1);
    const int N = kRowB ? b.size(b.ndim() - 1) : b.size(0);  // [N, K] or an OHWI [N, 1, 1, K]
    const int L = kRowB && b.ndim() > 2 ? b.numel() / (int64_t(K) * N) : 1;
    const int M = a.numel() / (int64_t(K) * L);
    auto sA = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, make_shape(M, K, L));
    auto sB = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(N, K, L));
    auto sC = cutlass::make_cute_packed_stride(typename Kernel::StrideC{}, make_shape(M, N, L));
    auto sD = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(M, N, L));
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm, {M, N, K, L},
        {static_cast<half_t*>(a.data_ptr()), sA, static_cast<half_t*>(b.data_ptr()), sB},
        {{}, Epi::ResidualPtr(residual), sC, static_cast<half_t*>(out.data_ptr()), sD}};
    Epi::SetArguments(args, bias);
    Launch<Gemm>(symbol, args, workspace, out,
                 "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" +
                     std::to_string(K));
  }
};

}  // namespace tvmopt
