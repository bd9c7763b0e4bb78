// A toy kernel-library op for the tests: out = max(x + bias, 0), fp16, bias broadcast along the
// last dimension; Threads threads per block.
#pragma once
#include <cuda_fp16.h>

#include "ffi.cuh"

namespace toy {

template <int Threads>
__global__ void __launch_bounds__(Threads)
    BiasRelu(const half* x, const half* bias, half* out, int64_t n, int64_t width) {
  const int64_t i = blockIdx.x * int64_t(Threads) + threadIdx.x;
  if (i < n) out[i] = __float2half(fmaxf(__half2float(x[i]) + __half2float(bias[i % width]), 0.f));
}

template <int Threads>
void Run(const char* symbol, tvm::ffi::TensorView x, tvm::ffi::TensorView bias,
         tvm::ffi::TensorView out) {
  const int64_t n = x.numel(), width = bias.numel();
  TVM_FFI_ICHECK(out.numel() == n && n % width == 0) << symbol << ": shapes do not broadcast";
  BiasRelu<Threads><<<(n + Threads - 1) / Threads, Threads, 0, tvmopt::StreamOf(out)>>>(
      static_cast<const half*>(x.data_ptr()), static_cast<const half*>(bias.data_ptr()),
      static_cast<half*>(out.data_ptr()), n, width);
  TVMOPT_CUDA_OK(symbol, cudaGetLastError());
}

}  // namespace toy
