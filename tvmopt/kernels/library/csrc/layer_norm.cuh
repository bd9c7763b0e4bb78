// Layer normalisation over the last dimension in fp16, fp32 statistics: out = (x - mean) /
// sqrt(var + eps) * gamma + beta; with Centre false, RMS normalisation: out = x / sqrt(mean(x^2)
// + eps) * gamma. One warp per row: each lane keeps its share of the row in registers (16-byte
// loads), so x is read once and out written once; mean and variance (of the centred values: no
// cancellation) are reduced across the warp by shuffles. Rows per CTA: Warps. Chunks: 8-element
// chunks per lane, the most a row of this instance may hold (32 * 8 * Chunks).
#pragma once
#include <cuda_fp16.h>

#include "ffi.cuh"

namespace tvmopt {
namespace layer_norm {

template <bool Centre, int Warps, int Chunks>
__global__ void __launch_bounds__(32 * Warps)
    Normalise(const half* __restrict__ x, const half* __restrict__ gamma,
              const half* __restrict__ beta, half* __restrict__ out, int64_t rows, int cols,
              float eps) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * Warps + threadIdx.x / 32;
  if (row >= rows) return;
  const int chunks = cols / 8;
  const half* xr = x + row * cols;
  float v[Chunks][8];
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int chunk = lane + 32 * c;
    if (chunk < chunks) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xr + chunk * 8);
      const half2* h = reinterpret_cast<const half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        v[c][2 * i] = f.x, v[c][2 * i + 1] = f.y;
        sum += f.x + f.y;
      }
    }
  }
  float mean = 0.f;
  if constexpr (Centre) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffff, sum, o);
    mean = sum / cols;
  }
  float squares = 0.f;
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    if (lane + 32 * c < chunks) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[c][i] -= mean;
        squares += v[c][i] * v[c][i];
      }
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) squares += __shfl_xor_sync(0xffffffff, squares, o);
  const float inv = rsqrtf(squares / cols + eps);
#pragma unroll
  for (int c = 0; c < Chunks; ++c) {
    const int chunk = lane + 32 * c;
    if (chunk < chunks) {
      const uint4 g_raw = *reinterpret_cast<const uint4*>(gamma + chunk * 8);
      const uint4 b_raw = Centre ? *reinterpret_cast<const uint4*>(beta + chunk * 8) : uint4{};
      const half2* g = reinterpret_cast<const half2*>(&g_raw);
      const half2* b = reinterpret_cast<const half2*>(&b_raw);  // zeros without Centre
      uint4 result;
      half2* r = reinterpret_cast<half2*>(&result);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 gf = __half22float2(g[i]), bf = __half22float2(b[i]);
        r[i] = __floats2half2_rn(v[c][2 * i] * inv * gf.x + bf.x,
                                 v[c][2 * i + 1] * inv * gf.y + bf.y);
      }
      *reinterpret_cast<uint4*>(out + row * cols + chunk * 8) = result;
    }
  }
}

// x and out [rows, cols] (any shape whose last dimension is cols), gamma and beta [cols] (beta
// null without Centre); cols a multiple of 8 no larger than 256 * Chunks.
template <bool Centre, int Warps, int Chunks>
void Run(const char* symbol, tvm::ffi::TensorView x, tvm::ffi::TensorView gamma,
         const tvm::ffi::TensorView* beta, double eps, tvm::ffi::TensorView out) {
  const int64_t cols = gamma.numel();
  TVM_FFI_ICHECK(cols % 8 == 0 && cols <= 256 * Chunks && (!Centre || beta->numel() == cols) &&
                 x.numel() % cols == 0 && out.numel() == x.numel())
      << symbol << ": cannot normalise rows of " << cols << " (at most " << 256 * Chunks
      << ", a multiple of 8)";
  const int64_t rows = x.numel() / cols;
  if (rows == 0) return;
  Normalise<Centre, Warps, Chunks><<<(rows + Warps - 1) / Warps, 32 * Warps, 0, StreamOf(out)>>>(
      static_cast<const half*>(x.data_ptr()), static_cast<const half*>(gamma.data_ptr()),
      Centre ? static_cast<const half*>(beta->data_ptr()) : nullptr,
      static_cast<half*>(out.data_ptr()), rows,
      int(cols), float(eps));
  TVMOPT_CUDA_OK(symbol, cudaGetLastError());
}

}  // namespace layer_norm
}  // namespace tvmopt
