"""C++ for one CUTLASS 3.x Hopper kernel instance, exported as a TVM FFI function.

Each instance computes D = act(X + bias + residual) (each term per the epilogue), fp16 in and out
with fp32 accumulation, in destination-passing style on the stream TVM gives it
(`InstanceSpec.source()`):
- a GEMM: X = A @ B as `symbol(a, b, [bias], [residual], workspace, out)`. A is [..., M, K]
  row-major; B is [K, N] ("row", an ONNX MatMul weight) or [N, K] ("col", a Gemm
  transB weight or an OHWI 1x1 conv filter); a B of rank > 2 makes a batched GEMM over its
  leading dimensions.
- a convolution: X = conv2d(A, B), NHWC activations and an OHWI filter, as an implicit GEMM
  (TMA im2col loads: no unfolded copy of the input), as `symbol(a, b, [bias], [residual],
  pad_top, pad_left, pad_bottom, pad_right, stride_h, stride_w, dilation_h, dilation_w,
  workspace, out)`.
Shapes and conv geometry are runtime arguments: one instance serves every layer of its kind.
An attention instance's source comes from `attention.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attention import attention_source, attention_symbol
from .tactics import SMS, Tactic

ACTIVATIONS = {"none": "Identity", "relu": "ReLu", "gelu": "GELU", "silu": "SiLu"}
_SCHEDULES = {  # (mainloop kernel schedule, epilogue schedule)
    "cooperative": ("KernelTmaWarpSpecializedCooperative", "TmaWarpSpecializedCooperative"),
    "pingpong": ("KernelTmaWarpSpecializedPingpong", "TmaWarpSpecialized"),
}
# A conv instance's int arguments, after its tensors: the layer's geometry.
CONV_PARAMS = ("pad_top", "pad_left", "pad_bottom", "pad_right", "stride_h", "stride_w",
               "dilation_h", "dilation_w")
_SCHEDULERS = {"persistent": "cutlass::gemm::PersistentScheduler",
               "streamk": "cutlass::gemm::StreamKScheduler"}


@dataclass(frozen=True)
class Epilogue:
    bias: bool = False
    activation: str = "none"  # applied after bias and residual: act(acc + bias + residual)
    residual: bool = False

    @property
    def name(self) -> str:
        parts = (["bias"] if self.bias else []) + (["residual"] if self.residual else []) + (
            [self.activation] if self.activation != "none" else [])
        return "_".join(parts) or "plain"


@dataclass(frozen=True)
class InstanceSpec:
    """One kernel instance: the operation ("gemm", "conv2d" or "attention"), B's layout for a GEMM
    ("row": B is [K, N]; "col": B is [N, K]; a conv's filter is always OHWI), the epilogue and the
    tactic; for attention, the kind of mask (`attention.AttentionGeometry.mask_kind`)."""
    op: str
    b_layout: str
    epilogue: Epilogue
    tactic: Tactic
    arch: str = "sm_90a"
    mask: str = "nomask"

    @property
    def symbol(self) -> str:
        if self.op == "attention":
            return attention_symbol(self.mask, self.tactic)
        layout = f"{self.b_layout}_" if self.op == "gemm" else ""
        return f"tvmopt_cutlass_{self.op}_{layout}{self.epilogue.name}_{self.tactic.name}"

    def source(self) -> str:
        if self.op == "attention":
            return attention_source(self.mask, self.tactic)
        return _gemm_source(self) if self.op == "gemm" else _conv_source(self)


_HEADERS = """\
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
"""
# The GEMM adapter also brings CUTLASS 2.x's GemmUniversal, which a conv kernel would match too.
_GEMM_HEADERS = """\
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/util/packed_stride.hpp"
"""
_CONV_HEADERS = """\
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
"""


def _fusion(e: Epilogue) -> str:
    """The epilogue's fusion operation: per-output-channel bias, then the activation."""
    act = f"cutlass::epilogue::thread::{ACTIVATIONS[e.activation]}"
    return (f"cutlass::epilogue::fusion::LinCombPerColBiasEltAct<{act}, half_t, float, half_t>"
            if e.bias else f"cutlass::epilogue::fusion::LinCombEltAct<{act}, half_t, float>")


def _collective_epilogue(e: Epilogue, layout: str, schedule: str) -> str:
    """The epilogue's CUTLASS types: D (and the residual C) in `layout`, fp16, 16-byte aligned."""
    return f"""using FusionOp = {_fusion(e)};
using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    half_t, {layout}, 8, half_t, {layout}, 8,
    cutlass::epilogue::{schedule}, FusionOp>::CollectiveOp;"""


def _tensor_params(e: Epilogue) -> list[str]:
    return (["tvm::ffi::TensorView a", "tvm::ffi::TensorView b"]
            + (["tvm::ffi::TensorView bias"] if e.bias else [])
            + (["tvm::ffi::TensorView residual"] if e.residual else []))


def _epilogue_arguments(e: Epilogue) -> str:
    return "\n  ".join([
        "args.epilogue.thread.alpha = 1.0f;",
        f"args.epilogue.thread.beta = {'1.0f' if e.residual else '0.0f'};",
        *(["args.epilogue.thread.bias_ptr = static_cast<half_t*>(bias.data_ptr());"]
          if e.bias else [])])


def _launch(kernel: str, symbol: str, what: str) -> str:
    """Check, then run `args` with the kernel type `kernel` on TVM's stream."""
    return f"""cudaStream_t stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, a.device().device_id));
  {kernel} op;
  TVM_FFI_ICHECK(op.can_implement(args) == cutlass::Status::kSuccess)
      << "{symbol}: CUTLASS cannot run " << {what};
  TVM_FFI_ICHECK({kernel}::get_workspace_size(args) <= size_t(workspace.numel()))
      << "{symbol}: needs a workspace of " << {kernel}::get_workspace_size(args) << " bytes";
  TVM_FFI_ICHECK(op.run(args, workspace.data_ptr(), stream) == cutlass::Status::kSuccess)
      << "{symbol}: launch failed";"""


def _gemm_source(spec: InstanceSpec) -> str:
    t, e = spec.tactic, spec.epilogue
    mainloop_schedule, epilogue_schedule = _SCHEDULES[t.schedule]
    layout_b = "RowMajor" if spec.b_layout == "row" else "ColumnMajor"
    params = [*_tensor_params(e), "tvm::ffi::TensorView workspace", "tvm::ffi::TensorView out"]
    sizes = ("const int N = b.size(b.ndim() - 1);\n"
             "  const int L = b.ndim() > 2 ? b.numel() / (int64_t(K) * N) : 1;"
             if spec.b_layout == "row" else
             "const int N = b.size(0);  // [N, K] or an OHWI 1x1 filter [N, 1, 1, K]\n"
             "  const int L = 1;")
    return f"""{_HEADERS}{_GEMM_HEADERS}
// {spec.symbol}: generated by tvmopt ({__name__}); fp16 in/out, fp32 accumulate.
namespace {{
using namespace cute;
using cutlass::half_t;
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::{layout_b};
using LayoutC = cutlass::layout::RowMajor;
using TileShape = Shape<_{t.tile_m}, _{t.tile_n}, _{t.tile_k}>;
using ClusterShape = Shape<_{t.cluster_m}, _{t.cluster_n}, _1>;
{_collective_epilogue(e, "LayoutC", epilogue_schedule)}
using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, half_t, LayoutA, 8, half_t, LayoutB, 8,
    float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<
        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::{mainloop_schedule}>::CollectiveOp;
using GemmKernel = cutlass::gemm::kernel::GemmUniversal<
    Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue, {_SCHEDULERS[t.scheduler]}>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
}}  // namespace

static void Run({", ".join(params)}) {{
  // A is [..., M, K]; a rank-2 B is shared by every row of A, a batched B has its own per batch.
  const int K = a.size(a.ndim() - 1);
  {sizes}
  const int M = a.numel() / (int64_t(K) * L);
  auto sA = cutlass::make_cute_packed_stride(typename GemmKernel::StrideA{{}}, make_shape(M, K, L));
  auto sB = cutlass::make_cute_packed_stride(typename GemmKernel::StrideB{{}}, make_shape(N, K, L));
  auto sC = cutlass::make_cute_packed_stride(typename GemmKernel::StrideC{{}}, make_shape(M, N, L));
  auto sD = cutlass::make_cute_packed_stride(typename GemmKernel::StrideD{{}}, make_shape(M, N, L));
  typename Gemm::Arguments args{{cutlass::gemm::GemmUniversalMode::kGemm, {{M, N, K, L}},
      {{static_cast<half_t*>(a.data_ptr()), sA, static_cast<half_t*>(b.data_ptr()), sB}},
      {{{{}}, {"static_cast<half_t*>(residual.data_ptr())" if e.residual else "nullptr"}, sC,
       static_cast<half_t*>(out.data_ptr()), sD}}}};
  {_epilogue_arguments(e)}
  {_launch("Gemm", spec.symbol, '"M=" << M << " N=" << N << " K=" << K')}
}}
TVM_FFI_DLL_EXPORT_TYPED_FUNC({spec.symbol}, Run);
"""


def _conv_source(spec: InstanceSpec) -> str:
    t, e = spec.tactic, spec.epilogue
    params = [*_tensor_params(e), *(f"int64_t {p}" for p in CONV_PARAMS),
              "tvm::ffi::TensorView workspace", "tvm::ffi::TensorView out"]
    return f"""{_HEADERS}{_CONV_HEADERS}
// {spec.symbol}: generated by tvmopt ({__name__}); fp16 in/out, fp32 accumulate.
namespace {{
using namespace cute;
using cutlass::half_t;
using Layout = cutlass::layout::TensorNHWC;  // activations NHWC, the filter KRSC (OHWI)
using TileShape = Shape<_{t.tile_m}, _{t.tile_n}, Shape<_{t.tile_k}>>;
using ClusterShape = Shape<_{t.cluster_m}, _{t.cluster_n}, _1>;
{_collective_epilogue(e, "Layout", "TmaWarpSpecialized")}
using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
    half_t, Layout, 8, half_t, Layout, 8, float, TileShape, ClusterShape,
    cutlass::conv::collective::StageCountAutoCarveout<
        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
using ProblemShape = cutlass::conv::ConvProblemShape<
    cutlass::conv::Operator::kFprop, CollectiveMainloop::DispatchPolicy::NumSpatialDimensions>;
using ConvKernel = cutlass::conv::kernel::ConvUniversal<
    ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Conv = cutlass::conv::device::ConvUniversalAdapter<ConvKernel>;
}}  // namespace

static void Run({", ".join(params)}) {{
  // a [N, H, W, C], b [K, R, S, C], out [N, P, Q, K]
  TVM_FFI_ICHECK(a.ndim() == 4 && b.ndim() == 4 && out.ndim() == 4)
      << "{spec.symbol}: expects NHWC activations and an OHWI filter";
  ProblemShape problem(cutlass::conv::Mode::kCrossCorrelation,
      {{int(a.size(0)), int(a.size(1)), int(a.size(2)), int(a.size(3))}},
      {{int(b.size(0)), int(b.size(1)), int(b.size(2)), int(b.size(3))}},
      {{int(pad_top), int(pad_left)}}, {{int(pad_bottom), int(pad_right)}},
      {{int(stride_h), int(stride_w)}}, {{int(dilation_h), int(dilation_w)}}, 1);
  for (int i = 0; i < 4; ++i) {{
    TVM_FFI_ICHECK(problem.shape_C[i] == out.size(i))
        << "{spec.symbol}: output dimension " << i << " is " << out.size(i) << ", the conv makes "
        << problem.shape_C[i];
  }}
  typename ConvKernel::StrideC sC;
  cute::for_each(cute::make_seq<cute::rank<0>(typename ConvKernel::StrideC{{}})>{{}}, [&](auto i) {{
    cute::get<0, i>(sC) = problem.stride_C[ProblemShape::RankT - 2 - i];
  }});
  typename Conv::Arguments args{{problem,
      {{static_cast<half_t*>(a.data_ptr()), static_cast<half_t*>(b.data_ptr())}},
      {{{{}}, {"static_cast<half_t*>(residual.data_ptr())" if e.residual else "nullptr"}, sC,
       static_cast<half_t*>(out.data_ptr()), sC}}}};
  {_epilogue_arguments(e)}
  {_launch("Conv", spec.symbol, '"a conv of filter " << b.size(0) << "x" << b.size(1) << "x" << b.size(2) << "x" << b.size(3)')}
}}
TVM_FFI_DLL_EXPORT_TYPED_FUNC({spec.symbol}, Run);
"""


def workspace_bytes(tactic: Tactic) -> int:
    """Scratch memory an instance may ask for: stream-K keeps partial tiles of every SM in fp32;
    persistent kernels need none (a few bytes keep the argument a real tensor)."""
    if tactic.scheduler == "streamk":
        return 2 * SMS * tactic.tile_m * tactic.tile_n * 4 + (1 << 16)
    return 256


TIMER_SYMBOL = "tvmopt_time_in_cuda_graph"

# `tvmopt_time_in_cuda_graph(name, calls, *args)`: seconds per call of the function `name` of the
# same shared library, captured `calls` times into one CUDA graph and replayed: the GPU's time as
# a CUDA-graph artifact spends it, without the host's per-call setup (which a timing loop of plain
# calls would add to every small kernel). Raw FFI ABI, so the arguments pass through untouched.
TIMER_SOURCE = """\
#include <dlfcn.h>
#include <exception>
#include <string>
#include <cuda_runtime.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>

// generated by tvmopt: times a kernel-library instance inside a CUDA graph.
#define TVMOPT_CUDA_OK(x) do { cudaError_t e = (x); \\
  TVM_FFI_ICHECK(e == cudaSuccess) << #x << ": " << cudaGetErrorString(e); } while (0)

namespace {
TVMFFISafeCallType Lookup(const std::string& name) {
  Dl_info info;
  TVM_FFI_ICHECK(dladdr(reinterpret_cast<void*>(&Lookup), &info)) << "dladdr failed";
  void* self = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  TVM_FFI_ICHECK(self != nullptr) << "cannot reopen " << info.dli_fname;
  void* fn = dlsym(self, ("__tvm_ffi_" + name).c_str());
  dlclose(self);
  TVM_FFI_ICHECK(fn != nullptr) << name << " is not in " << info.dli_fname;
  return reinterpret_cast<TVMFFISafeCallType>(fn);
}

void Call(TVMFFISafeCallType fn, const TVMFFIAny* args, int32_t num_args) {
  TVMFFIAny ret{};  // None: the instances return nothing
  TVM_FFI_CHECK_SAFE_CALL(fn(nullptr, args, num_args, &ret));
}

float TimeGraph(TVMFFISafeCallType fn, const TVMFFIAny* args, int32_t num_args, int calls,
                cudaStream_t stream) {
  Call(fn, args, num_args);  // once outside the graph: one-time setup, and any error
  TVMOPT_CUDA_OK(cudaStreamSynchronize(stream));
  cudaGraph_t graph = nullptr;
  TVMOPT_CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  try {
    for (int i = 0; i < calls; ++i) Call(fn, args, num_args);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  TVMOPT_CUDA_OK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  float ms = 0;
  cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  if (status == cudaSuccess) status = cudaEventCreate(&start);
  if (status == cudaSuccess) status = cudaEventCreate(&stop);
  if (status == cudaSuccess) status = cudaGraphLaunch(exec, stream);  // warm
  if (status == cudaSuccess) status = cudaEventRecord(start, stream);
  if (status == cudaSuccess) status = cudaGraphLaunch(exec, stream);
  if (status == cudaSuccess) status = cudaEventRecord(stop, stream);
  if (status == cudaSuccess) status = cudaEventSynchronize(stop);
  if (status == cudaSuccess) status = cudaEventElapsedTime(&ms, start, stop);
  if (stop) cudaEventDestroy(stop);
  if (start) cudaEventDestroy(start);
  if (exec) cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  TVMOPT_CUDA_OK(status);
  return ms;
}
}  // namespace

extern "C" TVM_FFI_DLL_EXPORT int __tvm_ffi_tvmopt_time_in_cuda_graph(
    void*, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  TVM_FFI_SAFE_CALL_BEGIN();
  const tvm::ffi::AnyView* view = reinterpret_cast<const tvm::ffi::AnyView*>(args);
  TVM_FFI_ICHECK_GE(num_args, 3) << "tvmopt_time_in_cuda_graph(name, calls, args...)";
  TVMFFISafeCallType fn = Lookup(std::string(view[0].cast<tvm::ffi::String>()));
  const int calls = view[1].cast<int>();
  const DLDevice device = view[2].cast<tvm::ffi::TensorView>().device();
  TVMOPT_CUDA_OK(cudaSetDevice(device.device_id));
  cudaStream_t stream;
  TVMOPT_CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  TVMFFIStreamHandle previous = nullptr;
  TVMFFIEnvSetStream(kDLCUDA, device.device_id, stream, &previous);
  float ms = 0;
  std::exception_ptr failure;
  try {
    ms = TimeGraph(fn, args + 2, num_args - 2, calls, stream);
  } catch (...) {
    failure = std::current_exception();
  }
  TVMFFIEnvSetStream(kDLCUDA, device.device_id, previous, nullptr);
  cudaStreamDestroy(stream);
  if (failure) std::rethrow_exception(failure);
  *reinterpret_cast<tvm::ffi::Any*>(result) = static_cast<double>(ms) * 1e-3 / calls;
  TVM_FFI_SAFE_CALL_END();
}
"""
