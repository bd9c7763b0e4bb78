// Attention on Hopper's TMA and warp-specialised wgmma (FlashAttention-3's scheme), from CUTLASS's
// Hopper FMHA (the nvidia-cutlass package's examples/88_hopper_fmha: its mainloop, kernel and
// tile schedulers, used as they ship). Q, K, V and the output are read and written through TMA
// where attention_problem.cuh's Run says they are (any order of batch, heads and sequence, packed
// projections): CUTLASS's strides are (sequence, 1, (batch, head)). Any scale and an additive
// mask of keys (fmha_mask.cuh) extend the mainloop. What it cannot do, the op never asks of it
// (attention.py: FmhaTactic.fits): grouped K/V heads, a causal offset other than 0, a causal mask
// with an additive one. Keys past the sequence's end in the last block are masked
// (ResidualFusion), so any sequence length runs; Launch checks the rest and says what it cannot
// run.
#pragma once
#include <cmath>

#include "attention_problem.cuh"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.h"
#include "collective/fmha_fusion.hpp"
#include "fmha_mask.cuh"
#include "device/device_universal.hpp"
#include "kernel/fmha_kernel_builder.hpp"

namespace tvmopt {
namespace fmha {
using namespace cute;
using cutlass::fmha::kernel::Option;
using cutlass::fmha::kernel::Tag;
using cutlass::half_t;

// CUTLASS's forward epilogue without its log-sum-exp output (a backward pass's input, which
// inference never reads): the output tile through TMA, nothing else.
template <class Element, class ElementAccumulator, class TileShapeWG>
struct OutputEpilogue
    : cutlass::fmha::collective::FmhaFwdEpilogue<Element, ElementAccumulator, TileShapeWG> {
  using Base = cutlass::fmha::collective::FmhaFwdEpilogue<Element, ElementAccumulator, TileShapeWG>;
  using typename Base::CollectiveEpilogueTMA;
  using typename Base::LoadPipeline;
  using typename Base::Params;
  using typename Base::TensorStorage;

  template <class TileShape, class BlkCoord, class ResultTuple, class TiledMma, class ProblemShape>
  CUTLASS_DEVICE void operator()(TileShape const& tile_shape, BlkCoord const& blk_coord,
                                 ResultTuple const& result, TiledMma const& tiled_mma,
                                 ProblemShape const& problem_size, Params const& params,
                                 LoadPipeline epi_load_pipeline,
                                 TensorStorage& epi_tensor_storage) {
    auto problem_size_o = make_shape(get<2>(problem_size), get<4>(problem_size), _,
                                     make_shape(get<0>(problem_size), get<1>(problem_size)));
    CollectiveEpilogueTMA epilogue_tma(params.epilogue_TMA, epi_tensor_storage);
    using StorePipeline = typename CollectiveEpilogueTMA::StorePipeline;
    typename StorePipeline::Params store_params;
    store_params.always_wait = true;
    StorePipeline store_pipeline(store_params);
    typename CollectiveEpilogueTMA::LoadPipelineState load_state;
    auto store_state = cutlass::make_producer_start_state<StorePipeline>();
    auto [load_next, store_next] = epilogue_tma.store(
        epi_load_pipeline, load_state, store_pipeline, store_state, problem_size_o, tile_shape,
        make_coord(get<0>(blk_coord), _0{}, _, get<2>(blk_coord)), get<0>(result), tiled_mma,
        threadIdx.x % cutlass::NumThreadsPerWarpGroup, epi_tensor_storage);
    epilogue_tma.store_tail(epi_load_pipeline, load_next, store_pipeline, store_next);
  }
};

// The kernel schedules: "cooperative" splits a 128-row query tile between two consumer warp
// groups; "pingpong" gives each its own tile and runs persistent CTAs (one per SM).
struct Cooperative {
  using Options = cute::tuple<>;
  using Scheduler = cutlass::fmha::kernel::IndividualTileScheduler;
};
struct Pingpong {
  using Options = cute::tuple<Option<Tag::kIsPersistent, cute::true_type>,
                              Option<Tag::kLoadsQSeparately, cute::true_type>>;
  using Scheduler = cutlass::fmha::kernel::PersistentTileScheduler;
};

template <class Schedule, class... Opts>
struct KernelOf;
template <class Schedule, class... Opts>
struct KernelOf<Schedule, cute::tuple<Opts...>> {
  template <class Mainloop, class Epilogue>
  using Kernel = cutlass::fmha::kernel::FmhaKernelTmaWarpSpecialized<
      Mainloop, Epilogue, typename Schedule::Scheduler, Opts...>;
  template <class TileShape, class Stride, class Fusion>
  using Mainloop = cutlass::fmha::collective::FmhaMainloopTmaWarpSpecialized<
      half_t, float, float, TileShape, Stride, Stride, Stride, Fusion, Opts...>;
};

// A tactic: query rows and keys per tile, the head dimension (the tile's third extent: one
// instance per head dimension), the schedule; the additive mask's element type (half or
// float, void for none) and whether the causal mask is generated.
template <int Rows, int Keys, int HeadDim, class Schedule, class MaskT, bool Causal>
struct Fmha {
  static_assert(!(Causal && !std::is_void_v<MaskT>), "a causal mask with an additive one");
  using TileShape = Shape<Int<Rows>, Int<Keys>, Int<HeadDim>>;
  using Stride = cute::tuple<int, _1, cute::tuple<int, int>>;  // sequence, dim, (batch, head)
  using Fusion = std::conditional_t<
      Causal, cutlass::fmha::collective::CausalFusion,
      std::conditional_t<std::is_void_v<MaskT>, cutlass::fmha::collective::ResidualFusion,
                         MaskFusion<MaskT>>>;
  using Family = KernelOf<Schedule, typename Schedule::Options>;
  using Mainloop =
      ScaledMainloop<typename Family::template Mainloop<TileShape, Stride, Fusion>, MaskT>;
  using Epilogue = OutputEpilogue<half_t, float, typename Mainloop::TileShapePV>;
  using Operation =
      cutlass::device::Universal<typename Family::template Kernel<Mainloop, Epilogue>>;

  static int Narrow(const char* symbol, int64_t value) {
    TVM_FFI_ICHECK(value >= 0 && value <= INT32_MAX && value % 8 == 0)
        << symbol << ": a stride of " << value
        << " elements is not a multiple of 8 below 2^31, as TMA needs";
    return int(value);
  }

  static Stride StrideOf(const char* symbol, const attention::Layout& l) {
    return make_stride(Narrow(symbol, l.seq), _1{},
                       make_stride(Narrow(symbol, l.batch), Narrow(symbol, l.head)));
  }

  // CUTLASS's device::Universal opts its kernel into large shared memory once per process: a
  // second GPU would miss it.
  static void OptInSharedMemory(const char* symbol) {
    using Kernel = typename Operation::Kernel;
    attention::OncePerDevice(symbol, [&] {
      TVMOPT_CUDA_OK(symbol, cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  int(Kernel::SharedStorageSize)));
    });
  }

  static void Launch(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
                     tvm::ffi::TensorView v, const tvm::ffi::TensorView* mask,
                     tvm::ffi::TensorView workspace, tvm::ffi::TensorView out,
                     const attention::Problem& p) {
    constexpr bool kMasked = !std::is_void_v<MaskT>;
    TVM_FFI_ICHECK((mask != nullptr) == kMasked && p.mask_sq == 0 && p.kv_heads == p.heads &&
                   p.head_dim == HeadDim && p.scale > 0.0f &&
                   (!Causal || (p.causal_offset == 0 && p.seq_q <= p.seq_k)))
        << symbol << ": runs head dimension " << HeadDim << (kMasked ? " with" : " without")
        << " an additive mask (of keys alone), a positive scale, no grouped K/V heads"
        << (Causal ? " and the causal mask of offset 0" : "");
    for (int64_t offset : {p.q_offset, p.k_offset, p.v_offset}) Narrow(symbol, offset);
    auto base = [](tvm::ffi::TensorView t, int64_t offset) {
      return static_cast<half_t*>(t.data_ptr()) + offset;
    };
    MaskView<MaskT> mask_view{};
    if constexpr (kMasked) {
      mask_view = {static_cast<const MaskT*>(mask->data_ptr()), p.mask_sb, p.mask_sh};
    }
    typename Operation::Arguments args{
        {p.batch, p.heads, p.seq_q, p.seq_k, p.head_dim},
        {{base(q, p.q_offset), StrideOf(symbol, p.q), base(k, p.k_offset), StrideOf(symbol, p.k),
          base(v, p.v_offset), StrideOf(symbol, p.v)},
         mask_view, p.scale},
        {base(out, 0), StrideOf(symbol, p.out), nullptr, {}},
        // The current device's SMs (a driver attribute): the persistent scheduler's grid.
        {0, cutlass::KernelHardwareInfo::query_device_multiprocessor_count()}};
    OptInSharedMemory(symbol);
    // Not Kernel::can_implement: besides the head dimension (checked above) it asks for a
    // query length of a multiple of 8, which TMA's bounds-checked loads and stores do not need.
    Operation op;
    TVM_FFI_ICHECK(op.run(args, workspace.data_ptr(), StreamOf(out)) ==
                   cutlass::Status::kSuccess)
        << symbol << ": launch failed: " << cudaGetErrorString(cudaGetLastError());
  }
};

}  // namespace fmha
}  // namespace tvmopt
