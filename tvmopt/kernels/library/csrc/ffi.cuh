// What every kernel-library instance needs: TVM FFI's tensors, its stream, and a CUDA check.
#pragma once
#include <cuda_runtime.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#define TVMOPT_CUDA_OK(symbol, x)                                                       \
  do {                                                                                  \
    cudaError_t tvmopt_status = (x);                                                    \
    TVM_FFI_ICHECK(tvmopt_status == cudaSuccess)                                        \
        << (symbol) << ": " << #x << ": " << cudaGetErrorString(tvmopt_status);         \
  } while (0)

namespace tvmopt {

// The stream TVM runs the artifact on, for the tensor's device.
inline cudaStream_t StreamOf(const tvm::ffi::TensorView& t) {
  return static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, t.device().device_id));
}

}  // namespace tvmopt
