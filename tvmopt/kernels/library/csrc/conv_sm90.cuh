// A CUTLASS 3.x Hopper convolution as an implicit GEMM (TMA im2col loads: no unfolded copy of
// the input) with the fused epilogue: out = act(conv2d(A, B) + bias + residual), NHWC
// activations and an OHWI (KRSC) filter, fp16 in and out, fp32 accumulation. Shapes and the
// windows (padding, stride, dilation) are runtime arguments.
// Hopper has one implicit-GEMM conv kernel: warp-specialized, one output tile per CTA.
#pragma once
#include "cutlass_sm90.cuh"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"

namespace tvmopt {

// The conv's windows, in the order an instance takes them after its tensors.
struct ConvWindows {
  int64_t pad_top, pad_left, pad_bottom, pad_right, stride_h, stride_w, dilation_h, dilation_w;
};

template <class Tile, class Epi>
struct ConvSm90 {
  using Layout = cutlass::layout::TensorNHWC;
  using CollectiveEpilogue = typename Epi::template Collective<
      typename Tile::ConvShape, typename Tile::Cluster, Layout,
      cutlass::epilogue::TmaWarpSpecialized>;
  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      half_t, Layout, 8, half_t, Layout, 8, float, typename Tile::ConvShape,
      typename Tile::Cluster,
      cutlass::conv::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using ProblemShape = cutlass::conv::ConvProblemShape<
      cutlass::conv::Operator::kFprop, CollectiveMainloop::DispatchPolicy::NumSpatialDimensions>;
  using Kernel =
      cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Conv = cutlass::conv::device::ConvUniversalAdapter<Kernel>;

  // a [N, H, W, C], b [K, R, S, C], out [N, P, Q, K]; `bias` and `residual` are null where the
  // epilogue has none.
  static void Run(const char* symbol, tvm::ffi::TensorView a, tvm::ffi::TensorView b,
                  const tvm::ffi::TensorView* bias, const tvm::ffi::TensorView* residual,
                  const ConvWindows& w, tvm::ffi::TensorView workspace,
                  tvm::ffi::TensorView out) {
    TVM_FFI_ICHECK(a.ndim() == 4 && b.ndim() == 4 && out.ndim() == 4)
        << symbol << ": expects NHWC activations and an OHWI filter";
    ProblemShape problem(cutlass::conv::Mode::kCrossCorrelation,
                         {int(a.size(0)), int(a.size(1)), int(a.size(2)), int(a.size(3))},
                         {int(b.size(0)), int(b.size(1)), int(b.size(2)), int(b.size(3))},
                         {int(w.pad_top), int(w.pad_left)}, {int(w.pad_bottom), int(w.pad_right)},
                         {int(w.stride_h), int(w.stride_w)},
                         {int(w.dilation_h), int(w.dilation_w)}, 1);
    for (int i = 0; i < 4; ++i) {
      TVM_FFI_ICHECK(problem.shape_C[i] == out.size(i))
          << symbol << ": output dimension " << i << " is " << out.size(i)
          << ", the conv makes " << problem.shape_C[i];
    }
    typename Kernel::StrideC sC;
    cute::for_each(cute::make_seq<cute::rank<0>(typename Kernel::StrideC{})>{}, [&](auto i) {
      cute::get<0, i>(sC) = problem.stride_C[ProblemShape::RankT - 2 - i];
    });
    typename Conv::Arguments args{
        problem,
        {static_cast<half_t*>(a.data_ptr()), static_cast<half_t*>(b.data_ptr())},
        {{}, Epi::ResidualPtr(residual), sC, static_cast<half_t*>(out.data_ptr()), sC}};
    Epi::SetArguments(args, bias);
    Launch<Conv>(symbol, args, workspace, out,
                 "a conv of filter " + std::to_string(b.size(0)) + "x" +
                     std::to_string(b.size(1)) + "x" + std::to_string(b.size(2)) + "x" +
                     std::to_string(b.size(3)));
  }
};

}  // namespace tvmopt
