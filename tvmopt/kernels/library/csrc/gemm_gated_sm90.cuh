// The GEMM of gemm_sm90.cuh with D = acc * C in fp16: a gated linear unit's up projection times
// the other half as C (SwiGLU's SiLU(gate), computed by its own GEMM's epilogue), so that the
// product needs no kernel of its own. A header of its own: the other instances' sources, which
// key every kernel cache, stay as they are.
#pragma once
#include "gemm_sm90.cuh"

namespace tvmopt {

struct GatedEpilogue {
  using FusionOp = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, half_t, float,
                                             cutlass::FloatRoundStyle::round_to_nearest>,
      cutlass::epilogue::fusion::Sm90AccFetch, cutlass::epilogue::fusion::Sm90SrcFetch<half_t>>;

  template <class TileShape, class ClusterShape, class Layout, class Schedule>
  using Collective = EpilogueCollective<FusionOp, TileShape, ClusterShape, Layout, Schedule>;

  // The gate comes as GemmSm90::Run's residual: CUTLASS's C.
  static half_t* ResidualPtr(const tvm::ffi::TensorView* gate) {
    return static_cast<half_t*>(gate->data_ptr());
  }

  template <class Arguments>
  static void SetArguments(Arguments&, const tvm::ffi::TensorView*) {}  // the tree has no scalars
};

}  // namespace tvmopt
