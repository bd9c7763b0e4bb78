// tvmopt_time_in_cuda_graph(name, calls, *args): seconds per call of the function `name` of the
// same shared library, captured `calls` times into one CUDA graph and replayed: the GPU's time as
// a CUDA-graph artifact spends it, without the host's per-call setup (which a timing loop of plain
// calls would add to every small kernel). Raw FFI ABI, so the arguments pass through untouched.
// Linked with the instances whose tactics `tvmopt tune` measures.
#include <dlfcn.h>
#include <exception>
#include <string>

#include "ffi.cuh"

namespace {
constexpr const char* kSymbol = "tvmopt_time_in_cuda_graph";

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
  TVMOPT_CUDA_OK(kSymbol, cudaStreamSynchronize(stream));
  cudaGraph_t graph = nullptr;
  TVMOPT_CUDA_OK(kSymbol, cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  try {
    for (int i = 0; i < calls; ++i) Call(fn, args, num_args);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  TVMOPT_CUDA_OK(kSymbol, cudaStreamEndCapture(stream, &graph));
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
  TVMOPT_CUDA_OK(kSymbol, status);
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
  TVMOPT_CUDA_OK(kSymbol, cudaSetDevice(device.device_id));
  cudaStream_t stream;
  TVMOPT_CUDA_OK(kSymbol, cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
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
