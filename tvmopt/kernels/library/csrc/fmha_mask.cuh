// Any softmax scale and an additive mask for CUTLASS's Hopper FMHA mainloop
// (examples/88_hopper_fmha), whose scale is 1/sqrt(head_dim) and whose fusions are stateless
// (`Fusion{}` is built inline, with the query and key indices of a tile but not its batch and
// head). Rather than a copy of the mainloop, two small extensions of it:
// - ScaledMainloop derives from the mainloop: its Params set the scale and add the mask, and its
//   compute() hands the mainloop's compute() Params whose mask already points at the tile's
//   batch and head.
// - CollectiveSoftmax is specialised for MaskFusion: each step adds the mask to the tile's scores
//   (read through the Params the mainloop passes it, which are ScaledMainloop's), then runs
//   CUTLASS's softmax with ResidualFusion (keys past the sequence's end hidden).
#pragma once
#include <cmath>
#include <type_traits>
#include <utility>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "collective/fmha_collective_softmax.hpp"
#include "collective/fmha_fusion.hpp"

namespace tvmopt {
namespace fmha {

// The mask of a call (Element void: none), one row of keys per batch and head, the same for every
// query (a padding mask: one with a query extent runs the mma.sync kernel, faster there on an
// H100): the key's element at ptr + key once ptr is at the batch and head (0 strides where the
// mask broadcasts).
template <class Element>
struct MaskView {
  const Element* ptr;
  int64_t batch_stride, head_stride;
};

// Every key block runs the fusion (the mask may hide any key), none "unmasked".
template <class Element>
struct MaskFusion : cutlass::fmha::collective::DefaultFusion {};

// Scores are unscaled inside the mainloop (the softmax multiplies them by the scale): the mask is
// added times inv_scale.
template <class BaseParams, class Element>
struct MaskedParams : BaseParams {
  MaskView<Element> mask;
  float inv_scale;
};

template <class Base, class Element>
struct ScaledMainloop : Base {
  struct Arguments : Base::Arguments {
    MaskView<Element> mask;  // ptr at the mask's first element
    float scale;
  };
  using Params = MaskedParams<typename Base::Params, Element>;

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape const& problem_size, Arguments const& args,
                                        void* workspace) {
    Params params{Base::to_underlying_arguments(problem_size, args, workspace), args.mask,
                  1.0f / args.scale};
    params.scale_softmax = args.scale;
    params.scale_softmax_log2 = args.scale * float(M_LOG2E);
    return params;
  }

  template <class BlkCoord, class... Rest>
  CUTLASS_DEVICE auto compute(BlkCoord const& blk_coord, BlkCoord const& wg_coord,
                              Params const& params, Rest&&... rest) {
    if constexpr (std::is_void_v<Element>) {
      return Base::compute(blk_coord, wg_coord, params, std::forward<Rest>(rest)...);
    } else {
      Params tile = params;
      tile.mask.ptr += cute::get<0>(cute::get<2>(blk_coord)) * params.mask.batch_stride +
                       cute::get<1>(cute::get<2>(blk_coord)) * params.mask.head_stride;
      return Base::compute(blk_coord, wg_coord, tile, std::forward<Rest>(rest)...);
    }
  }
};

}  // namespace fmha
}  // namespace tvmopt

namespace cutlass::fmha::collective {

template <class ElementAccumulator, class MaskElement, class Params>
struct CollectiveSoftmax<ElementAccumulator, tvmopt::fmha::MaskFusion<MaskElement>, Params>
    : CollectiveSoftmax<ElementAccumulator, ResidualFusion, Params> {
  using Base = CollectiveSoftmax<ElementAccumulator, ResidualFusion, Params>;
  using Base::Base;

  template <class AccQK, class TiledMmaQK, class CountQK, class State, class ProblemShape>
  CUTLASS_DEVICE auto step(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk, CountQK const& count_qk,
                           State& state, ProblemShape const& problem_shape) {
    AddMask(acc_qk, tiled_mma_qk, count_qk, problem_shape);
    return Base::step(acc_qk, tiled_mma_qk, count_qk, state, problem_shape);
  }

  template <bool kUseFusion = true, class AccQK, class TiledMmaQK, class CountQK, class State,
            class AccPV, class TiledMmaPV, class ProblemShape>
  CUTLASS_DEVICE auto step(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk, CountQK const& count_qk,
                           State& state, AccPV& acc_pv, TiledMmaPV const& tiled_mma_pv,
                           ProblemShape const& problem_shape) {
    AddMask(acc_qk, tiled_mma_qk, count_qk, problem_shape);
    return Base::template step<true>(acc_qk, tiled_mma_qk, count_qk, state, acc_pv, tiled_mma_pv,
                                     problem_shape);
  }

 private:
  // Each thread's scores as (query, key) rows and columns: the mask (one row of keys) is read
  // once per column.
  template <class AccQK, class TiledMmaQK, class CountQK, class ProblemShape>
  CUTLASS_DEVICE void AddMask(AccQK& acc_qk, TiledMmaQK const& tiled_mma_qk,
                              CountQK const& count_qk, ProblemShape const& problem_shape) {
    using Masked =
        tvmopt::fmha::MaskedParams<std::remove_cv_t<std::remove_reference_t<Params>>, MaskElement>;
    const auto& masked = static_cast<const Masked&>(this->params);
    Tensor acc = make_tensor(acc_qk.data(), layout_acc_mn(tiled_mma_qk, acc_qk.layout()));
    Tensor index = make_tensor(count_qk.data(), layout_acc_mn(tiled_mma_qk, count_qk.layout()));
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < size<1>(acc); j++) {
      const int key = get<1>(index(0, j));
      if (key >= get<3>(problem_shape)) continue;  // hidden by ResidualFusion
      const float add = float(masked.mask.ptr[key]) * masked.inv_scale;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size<0>(acc); i++) acc(i, j) += add;
    }
  }
};

}  // namespace cutlass::fmha::collective
