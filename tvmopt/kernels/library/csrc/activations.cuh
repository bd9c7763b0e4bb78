// Epilogue activations CUTLASS does not have (host and device: tests evaluate them on the CPU).
#pragma once
#include <cmath>

#include "cutlass/array.h"
#include "cutlass/cutlass.h"

namespace tvmopt {

// GELU(x) = x * Phi(x) (Phi the standard normal CDF: the erf GELU models export) in about half
// the instructions of CUTLASS's GELU, whose erff evaluates two polynomials a warp runs both of:
// an FFN-in GEMM's epilogue is heavy enough to show. Phi(-t) = exp(-t^2 / 2) R(t) for t = |x|,
// with R (a Mills ratio) a degree-9 polynomial fitted on [0, 4]: GELU off by < 3e-5 relative
// for |x| < 4 and < 3e-6 absolute everywhere (fp16's own rounding is 4.9e-4 relative).
template <class T>
struct GeluErf {
  static const bool kIsHeavy = true;

  CUTLASS_HOST_DEVICE float operator()(float x) const {
    constexpr float kR[] = {4.999960959e-01f, -3.987656236e-01f, 2.486037314e-01f,
                            -1.284758747e-01f, 5.471042544e-02f, -1.831428148e-02f,
                            4.501932766e-03f, -7.469225093e-04f, 7.367024955e-05f,
                            -3.235488293e-06f};
    const float t = fminf(fabsf(x), 4.0f);
    float r = kR[9];
    CUTLASS_PRAGMA_UNROLL
    for (int i = 8; i >= 0; --i) r = fmaf(r, t, kR[i]);
    const float e = -0.72134752f * x * x;  // -x^2 / 2 in log2 units
#if defined(__CUDA_ARCH__)
    float gauss;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(gauss) : "f"(e));
#else
    const float gauss = exp2f(e);
#endif
    const float tail = gauss * r;  // Phi(-|x|)
    return x * (x >= 0.0f ? 1.0f - tail : tail);
  }
};

template <int N>
struct GeluErf<cutlass::Array<float, N>> {
  static const bool kIsHeavy = true;

  CUTLASS_HOST_DEVICE cutlass::Array<float, N> operator()(
      cutlass::Array<float, N> const& x) const {
    cutlass::Array<float, N> y;
    GeluErf<float> gelu;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) y[i] = gelu(x[i]);
    return y;
  }
};

}  // namespace tvmopt
