// A fused attention (FlashAttention-2's scheme on mma.sync tensor cores) for the attention the
// ONNX exporters write out op by op: out = softmax(scale * Q K^T + mask) V per batch and head,
// in one kernel. Each CTA takes a block of query rows (16 per warp) and walks the keys a block at
// a time: K and V of the next block load (cp.async, two stages) while this one computes; S = Q K^T
// from ldmatrix fragments stays in registers, the mask is added and the running max and sum kept
// in fp32 (each thread holds two rows, two keys of every 8: a row's max and sum take one
// exchange within each quad of lanes), and P goes from the accumulators straight into P V's
// A operand as fp16. The scores never touch shared memory. The mask is additive, fp16 or fp32,
// any shape that broadcasts to [batch, heads, seq_q, seq_k] with the keys contiguous (its strides
// say how it broadcasts). A causal instance generates its mask (key > query + offset is hidden)
// and skips the key blocks wholly above the diagonal. Each of Q, K, V and the output is read in
// the layout its producer wrote (batch, heads and sequence in any order, the head dimension
// innermost: a Layout; Q, K and V may be column slices of one packed projection, rows `pitch`
// elements apart), and K and V may have fewer heads than Q (grouped-query attention: head h
// reads K/V head h / (heads / kv_heads), never a copy). Batch and sequence lengths are runtime
// arguments. (An earlier kernel staged the scores in shared memory through WMMA: 1.7-5.6x slower
// at every shape measured, benchmarks/results/attention_kernel_h100_2026-12-07.md.)
#pragma once
#include <cfloat>
#include <type_traits>

#include <cuda_fp16.h>

#include "attention_problem.cuh"

namespace tvmopt {
namespace attention {

// A tactic: Warps warps of 16 query rows per CTA, KeyBlock keys per step; Mask is the additive
// mask's element type (half or float), void for none; Causal generates the causal mask.
template <int Warps, int KeyBlock, class Mask, bool Causal = false>
struct Config {
  static constexpr int kWarps = Warps;
  static constexpr int kRows = 16 * Warps;  // query rows per CTA
  static constexpr int kKeys = KeyBlock;    // keys per step
  static constexpr int kThreads = 32 * Warps;
  static constexpr bool kMasked = !std::is_void_v<Mask>;
  static constexpr bool kCausal = Causal;
  using MaskT = std::conditional_t<kMasked, Mask, float>;
};

template <class C, int D>
struct Smem {
  static constexpr int kLd = D + 8;  // halves per Q/K/V row: padded against bank conflicts
  static constexpr size_t kBytes = sizeof(half) * (C::kRows + 4 * C::kKeys) * kLd;  // Q; K, V x2
};

__device__ __forceinline__ void CopyAsync16(void* smem, const void* global, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void CommitAsync() { asm volatile("cp.async.commit_group;\n" ::); }

__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ void Ldmatrix(unsigned (&r)[4], const half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

__device__ __forceinline__ void LdmatrixTrans(unsigned (&r)[4], const half* p) {
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

// d += a b for a 16x16 fp16 A fragment, a 16x8 B fragment (b0, b1) and a 16x8 fp32 accumulator.
__device__ __forceinline__ void Mma(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                    unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned PackHalves(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const unsigned*>(&h);
}

// Rows [row0, row0 + ROWS) of x (rows `row_stride` apart) into smem, asynchronously, zeros past
// the sequence's end.
template <class C, int D, int ROWS>
__device__ __forceinline__ void LoadRowsAsync(half* dst, const half* x, int64_t row_stride,
                                              int row0, int seq) {
  constexpr int kChunks = D / 8, kSteps = (ROWS * kChunks + C::kThreads - 1) / C::kThreads;
#pragma unroll
  for (int n = 0; n < kSteps; ++n) {
    const int i = threadIdx.x + n * C::kThreads, r = i / kChunks, c = (i % kChunks) * 8;
    if (ROWS * kChunks % C::kThreads != 0 && i >= ROWS * kChunks) break;
    const bool valid = row0 + r < seq;
    CopyAsync16(dst + r * Smem<C, D>::kLd + c, valid ? x + (row0 + r) * row_stride + c : x,
                valid);
  }
}

template <class C, int D>
__global__ void __launch_bounds__(C::kThreads) Attention(
    const half* __restrict__ q, const half* __restrict__ k, const half* __restrict__ v,
    const typename C::MaskT* __restrict__ mask, half* __restrict__ out, int H, int group, int Sq,
    int Sk, float scale, int64_t mask_sb, int64_t mask_sh, int64_t mask_sq, int causal_offset,
    Layout ql, Layout kl, Layout vl, Layout ol) {
  static_assert(D % 16 == 0 && C::kKeys % 16 == 0, "whole 16x16 fragments");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kLd = Smem<C, D>::kLd, kKeyTiles = C::kKeys / 8, kDimTiles = D / 8;
  constexpr float kLog2e = 1.4426950408889634f;
  half* qs = reinterpret_cast<half*>(smem_raw);
  half* kv = qs + C::kRows * kLd;  // stage s: K at kv + 2 * s * kKeys * kLd, V after it
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * C::kRows, hk = h / group;
  const half* kb = k + b * kl.batch + hk * kl.head;
  const half* vb = v + b * vl.batch + hk * vl.head;
  // A causal CTA stops after the last key its last query row sees.
  const int key_end = C::kCausal ? max(0, min(Sk, q0 + C::kRows + causal_offset)) : Sk;
  const int blocks = (key_end + C::kKeys - 1) / C::kKeys;
  LoadRowsAsync<C, D, C::kRows>(qs, q + b * ql.batch + h * ql.head, ql.seq, q0, Sq);
  if (blocks > 0) {
    LoadRowsAsync<C, D, C::kKeys>(kv, kb, kl.seq, 0, Sk);
    LoadRowsAsync<C, D, C::kKeys>(kv + C::kKeys * kLd, vb, vl.seq, 0, Sk);
  }
  CommitAsync();

  const half* qw = qs + warp * 16 * kLd;
  const int rows[2] = {q0 + warp * 16 + lane / 4, q0 + warp * 16 + lane / 4 + 8};
  const typename C::MaskT* mrow[2] = {nullptr, nullptr};
  if constexpr (C::kMasked) {
    for (int i = 0; i < 2; ++i) {
      mrow[i] = mask + b * mask_sb + h * mask_sh + min(rows[i], Sq - 1) * mask_sq;
    }
  }
  const float scale_log2 = scale * kLog2e;
  float acc[kDimTiles][4];
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  for (int j = 0; j < blocks; ++j) {
    WaitAsync();
    __syncthreads();  // block j is in shared memory, and every warp is done with block j - 1
    if (j + 1 < blocks) {
      half* next = kv + ((j + 1) & 1) * 2 * C::kKeys * kLd;
      LoadRowsAsync<C, D, C::kKeys>(next, kb, kl.seq, (j + 1) * C::kKeys, Sk);
      LoadRowsAsync<C, D, C::kKeys>(next + C::kKeys * kLd, vb, vl.seq, (j + 1) * C::kKeys, Sk);
    }
    CommitAsync();
    const half* ks = kv + (j & 1) * 2 * C::kKeys * kLd;
    const half* vs = ks + C::kKeys * kLd;
    const int key0 = j * C::kKeys;

    float s[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int d = 0; d < D; d += 16) {
      unsigned a[4];
      Ldmatrix(a, qw + (lane % 16) * kLd + d + (lane / 16) * 8);
#pragma unroll
      for (int n = 0; n < kKeyTiles; n += 2) {
        unsigned bk[4];
        Ldmatrix(bk, ks + (n * 8 + (lane / 16) * 8 + lane % 8) * kLd + d + (lane / 8 % 2) * 8);
        Mma(s[n], a, bk[0], bk[1]);
        Mma(s[n + 1], a, bk[2], bk[3]);
      }
    }
    // Scores in log2 units with the mask added; s[n][e] is row rows[e / 2], key
    // key0 + 8 n + 2 (lane % 4) + e % 2.
    float base[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float step_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
        for (int e = 2 * i; e < 2 * i + 2; ++e) {
          const int key = key0 + n * 8 + 2 * (lane % 4) + e % 2;
          float x = s[n][e] * scale_log2;
          if constexpr (C::kMasked) x += key < Sk ? float(mrow[i][key]) * kLog2e : 0.f;
          if (key >= Sk || (C::kCausal && key > rows[i] + causal_offset)) x = -INFINITY;
          s[n][e] = x;
          step_max = fmaxf(step_max, x);
        }
      }
      step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffff, step_max, 1));
      step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffff, step_max, 2));
      const float new_max = fmaxf(row_max[i], step_max);
      base[i] = new_max == -INFINITY ? 0.f : new_max;  // every key so far hidden
      const float rescale = exp2f(row_max[i] - base[i]);
      row_max[i] = new_max;
      row_sum[i] *= rescale;
#pragma unroll
      for (int t = 0; t < kDimTiles; ++t) {
        acc[t][2 * i] *= rescale;
        acc[t][2 * i + 1] *= rescale;
      }
    }
    // O += P V, 16 keys at a time: two score tiles are one A fragment of P.
#pragma unroll
    for (int kk = 0; kk < C::kKeys / 16; ++kk) {
      float e[2][4];
#pragma unroll
      for (int half_tile = 0; half_tile < 2; ++half_tile) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          e[half_tile][c] = exp2f(s[2 * kk + half_tile][c] - base[c / 2]);
          row_sum[c / 2] += e[half_tile][c];
        }
      }
      const unsigned p[4] = {PackHalves(e[0][0], e[0][1]), PackHalves(e[0][2], e[0][3]),
                             PackHalves(e[1][0], e[1][1]), PackHalves(e[1][2], e[1][3])};
#pragma unroll
      for (int t = 0; t < kDimTiles; t += 2) {
        unsigned bv[4];
        LdmatrixTrans(bv, vs + (kk * 16 + (lane / 8 % 2) * 8 + lane % 8) * kLd + t * 8
                              + (lane / 16) * 8);
        Mma(acc[t], p, bv[0], bv[1]);
        Mma(acc[t + 1], p, bv[2], bv[3]);
      }
    }
  }
  WaitAsync();  // no copy still lands in Q's rows, which now stage the output
  float inv[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 1);
    row_sum[i] += __shfl_xor_sync(0xffffffff, row_sum[i], 2);
    inv[i] = row_sum[i] > 0.f ? 1.f / row_sum[i] : 0.f;
  }
  __syncthreads();  // every warp's reads of Q are done (and, with no key block, Q has landed)
  half* ow = qs + warp * 16 * kLd;
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) {
    const int col = t * 8 + 2 * (lane % 4);
    *reinterpret_cast<__half2*>(ow + (lane / 4) * kLd + col) =
        __floats2half2_rn(acc[t][0] * inv[0], acc[t][1] * inv[0]);
    *reinterpret_cast<__half2*>(ow + (lane / 4 + 8) * kLd + col) =
        __floats2half2_rn(acc[t][2] * inv[1], acc[t][3] * inv[1]);
  }
  __syncwarp();
  half* ob = out + b * ol.batch + h * ol.head;
#pragma unroll
  for (int i = lane; i < 16 * kDimTiles; i += 32) {
    const int r = i / kDimTiles, c = (i % kDimTiles) * 8, row = q0 + warp * 16 + r;
    if (row < Sq) {
      *reinterpret_cast<uint4*>(ob + row * ol.seq + c) =
          *reinterpret_cast<const uint4*>(ow + r * kLd + c);
    }
  }
}

template <class C, int D>
void OptInSharedMemory(const char* symbol) {
  OncePerDevice(symbol, [&] {
    TVMOPT_CUDA_OK(symbol, cudaFuncSetAttribute(Attention<C, D>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                int(Smem<C, D>::kBytes)));
  });
}

template <class C, int D>
void Launch(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
            tvm::ffi::TensorView v, const typename C::MaskT* mask, tvm::ffi::TensorView out,
            const Problem& p) {
  OptInSharedMemory<C, D>(symbol);
  dim3 grid((p.seq_q + C::kRows - 1) / C::kRows, p.heads, p.batch);
  Attention<C, D><<<grid, C::kThreads, Smem<C, D>::kBytes, StreamOf(q)>>>(
      static_cast<const half*>(q.data_ptr()) + p.q_offset,
      static_cast<const half*>(k.data_ptr()) + p.k_offset,
      static_cast<const half*>(v.data_ptr()) + p.v_offset, mask,
      static_cast<half*>(out.data_ptr()), p.heads,
      p.heads / p.kv_heads, p.seq_q, p.seq_k, p.scale, p.mask_sb, p.mask_sh, p.mask_sq,
      p.causal_offset, p.q, p.k, p.v, p.out);
  TVMOPT_CUDA_OK(symbol, cudaGetLastError());
}

// The launch for the head dimension found, among those instantiated (HeadDims).
template <class C, int... HeadDims>
void Dispatch(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
              tvm::ffi::TensorView v, const typename C::MaskT* mask, tvm::ffi::TensorView out,
              const Problem& p) {
  const bool launched = ((p.head_dim == HeadDims &&
                          (Launch<C, HeadDims>(symbol, q, k, v, mask, out, p), true)) || ...);
  if (!launched) {
    std::string dims;
    ((dims += (dims.empty() ? "" : ", ") + std::to_string(HeadDims)), ...);
    TVM_FFI_THROW(ValueError) << symbol << ": head dimension " << p.head_dim << " is not one of "
                              << dims;
  }
}

// The mma.sync kernel family for attention_problem.cuh's Run: tactic C, the head dimensions
// instantiated.
template <class C, int... HeadDims>
struct MmaKernel {
  static void Launch(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
                     tvm::ffi::TensorView v, const tvm::ffi::TensorView* mask,
                     tvm::ffi::TensorView /*workspace*/, tvm::ffi::TensorView out,
                     const Problem& p) {
    const auto* mask_data =
        C::kMasked ? static_cast<const typename C::MaskT*>(mask->data_ptr()) : nullptr;
    Dispatch<C, HeadDims...>(symbol, q, k, v, mask_data, out, p);
  }
};

}  // namespace attention
}  // namespace tvmopt
