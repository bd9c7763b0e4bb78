// The parts CUTLASS 3.x Hopper GEMMs and convolutions share: the tile, the fused epilogue
// D = act(acc + bias + residual) in fp16 with fp32 accumulation, and the checked launch.
#pragma once
#include <type_traits>

#include "activations.cuh"
#include "ffi.cuh"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"

namespace tvmopt {
using cutlass::half_t;

// A tactic's thread-block tile and cluster.
template <int M, int N, int K, int ClusterM, int ClusterN>
struct Tile {
  using Shape = cute::Shape<cute::Int<M>, cute::Int<N>, cute::Int<K>>;
  using ConvShape = cute::Shape<cute::Int<M>, cute::Int<N>, cute::Shape<cute::Int<K>>>;
  using Cluster = cute::Shape<cute::Int<ClusterM>, cute::Int<ClusterN>, cute::_1>;
};

// The epilogue collective computing `FusionOp` (a CUTLASS fusion operation or an epilogue
// visitor tree): D (and C) in `Layout`, fp16, 16-byte aligned.
template <class FusionOp, class TileShape, class ClusterShape, class Layout, class Schedule>
using EpilogueCollective = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, half_t, Layout, 8, half_t,
    Layout, 8, Schedule, FusionOp>::CollectiveOp;

// What follows the accumulation: the per-output-channel bias, the residual (as CUTLASS's C with
// beta = 1), then the activation (CUTLASS's Identity, ReLu, GELU_taylor or SiLu, or GeluErf).
template <template <class> class Act, bool Bias, bool Residual>
struct Epilogue {
  using FusionOp = std::conditional_t<
      Bias, cutlass::epilogue::fusion::LinCombPerColBiasEltAct<Act, half_t, float, half_t>,
      cutlass::epilogue::fusion::LinCombEltAct<Act, half_t, float>>;

  template <class TileShape, class ClusterShape, class Layout, class Schedule>
  using Collective = EpilogueCollective<FusionOp, TileShape, ClusterShape, Layout, Schedule>;

  static half_t* ResidualPtr(const tvm::ffi::TensorView* residual) {
    return Residual ? static_cast<half_t*>(residual->data_ptr()) : nullptr;
  }

  template <class Arguments>
  static void SetArguments(Arguments& args, const tvm::ffi::TensorView* bias) {
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = Residual ? 1.0f : 0.0f;
    if constexpr (Bias) args.epilogue.thread.bias_ptr = static_cast<half_t*>(bias->data_ptr());
  }
};

// Check that the kernel can run `args` in the workspace given, then run it on TVM's stream.
// `what` describes the problem for the error message.
template <class Adapter>
void Launch(const char* symbol, const typename Adapter::Arguments& args,
            const tvm::ffi::TensorView& workspace, const tvm::ffi::TensorView& out,
            const std::string& what) {
  Adapter op;
  TVM_FFI_ICHECK(op.can_implement(args) == cutlass::Status::kSuccess)
      << symbol << ": CUTLASS cannot run " << what;
  const size_t needed = Adapter::get_workspace_size(args);
  TVM_FFI_ICHECK(needed <= size_t(workspace.numel()))
      << symbol << ": needs a workspace of " << needed << " bytes";
  TVM_FFI_ICHECK(op.run(args, workspace.data_ptr(), StreamOf(out)) == cutlass::Status::kSuccess)
      << symbol << ": launch failed";
}

}  // namespace tvmopt
