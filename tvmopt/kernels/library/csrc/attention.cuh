// A fused attention (FlashAttention's online softmax, tensor cores through WMMA) for the
// attention the ONNX exporters write out op by op: out = softmax(scale * Q K^T + mask) V per
// batch and head, in one kernel. The scores never leave shared memory, and Q, K, V and the
// output stay in the [batch, seq, heads * head_dim] layout the projections write, so the head
// split and merge transposes go too. Each CTA takes a block of query rows (16 per warp) and
// walks the keys a block at a time: S = Q K^T on tensor cores (fp32), mask (the accumulator
// starts from mask / scale) and the running max and sum in fp32, a row at a time across the
// warp's lanes, P in fp16 back through tensor cores into an fp32 accumulator rescaled as the max
// moves. The mask is additive, fp16 or fp32, any shape that broadcasts to
// [batch, heads, seq_q, seq_k] with the keys contiguous (its strides say how it broadcasts).
// A causal instance generates its mask (key > query + offset is hidden) and skips the key blocks
// wholly above the diagonal. Each of Q, K, V and the output is read in the layout its producer
// wrote (batch, heads and sequence in any order, the head dimension innermost: a Layout; Q, K
// and V may be column slices of one packed projection, rows `pitch` elements apart), and
// K and V may have fewer heads than Q (grouped-query attention: head h reads K/V head
// h / (heads / kv_heads), never a copy). Batch and sequence lengths are runtime arguments.
#pragma once
#include <cfloat>
#include <mutex>
#include <type_traits>

#include <cuda_fp16.h>
#include <mma.h>

#include "ffi.cuh"

namespace tvmopt {
namespace attention {
using namespace nvcuda;

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

// Where a [batch, heads, seq, D] tensor's rows are: element strides of batch, head and sequence
// (the head dimension is contiguous).
struct Layout {
  int64_t batch, head, seq;
};

template <class C, int D>
struct Smem {
  static constexpr int kLd = D + 8;  // halves per Q/K/V row: padded against bank conflicts
  static constexpr int kSLd = (D > C::kKeys ? D : C::kKeys) + 4;  // floats per score row
  static constexpr int kPLd = C::kKeys + 8;
  static constexpr size_t kBytes = sizeof(half) * (C::kRows + 2 * C::kKeys) * kLd
      + sizeof(float) * C::kWarps * 16 * kSLd + sizeof(half) * C::kWarps * 16 * kPLd;
};

// Rows [row0, row0 + ROWS) of x, a [batch * seq, heads * D] matrix read at head h, into smem
// (zeros past the sequence's end), 16 bytes per access: up to 4 loads per thread are in flight
// before the first store, so the CTA does not wait for global memory once per row.
template <class C, int D, int ROWS>
__device__ __forceinline__ void LoadRows(half* dst, const half* x, int64_t row_stride, int row0,
                                         int seq) {
  constexpr int kChunks = D / 8, kPer = ROWS * kChunks / C::kThreads;
  constexpr int kBatch = kPer < 4 ? kPer : 4;
#pragma unroll
  for (int n0 = 0; n0 < kPer; n0 += kBatch) {
    uint4 value[kBatch];
#pragma unroll
    for (int n = 0; n < kBatch; ++n) {
      const int i = threadIdx.x + (n0 + n) * C::kThreads, r = i / kChunks, c = (i % kChunks) * 8;
      value[n] = row0 + r < seq ? *reinterpret_cast<const uint4*>(x + (row0 + r) * row_stride + c)
                                : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int n = 0; n < kBatch; ++n) {
      const int i = threadIdx.x + (n0 + n) * C::kThreads, r = i / kChunks, c = (i % kChunks) * 8;
      *reinterpret_cast<uint4*>(dst + r * Smem<C, D>::kLd + c) = value[n];
    }
  }
}

template <class C, int D>
__global__ void __launch_bounds__(C::kThreads) Attention(
    const half* __restrict__ q, const half* __restrict__ k, const half* __restrict__ v,
    const typename C::MaskT* __restrict__ mask, half* __restrict__ out, int H, int group, int Sq,
    int Sk, float scale, int64_t mask_sb, int64_t mask_sh, int64_t mask_sq, int causal_offset,
    Layout ql, Layout kl, Layout vl, Layout ol) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using S = Smem<C, D>;
  half* qs = reinterpret_cast<half*>(smem_raw);
  half* ks = qs + C::kRows * S::kLd;
  half* vs = ks + C::kKeys * S::kLd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* ss = reinterpret_cast<float*>(vs + C::kKeys * S::kLd) + warp * 16 * S::kSLd;
  half* ps = reinterpret_cast<half*>(reinterpret_cast<float*>(vs + C::kKeys * S::kLd)
                                     + C::kWarps * 16 * S::kSLd) + warp * 16 * S::kPLd;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * C::kRows, hk = h / group;
  const half* qb = q + b * ql.batch + h * ql.head;
  const half* kb = k + b * kl.batch + hk * kl.head;
  const half* vb = v + b * vl.batch + hk * vl.head;
  LoadRows<C, D, C::kRows>(qs, qb, ql.seq, q0, Sq);

  // Each lane owns columns lane + 32 * c of all 16 of its warp's rows: every shared-memory access
  // hits 32 banks once, and the mask and output rows are read and written coalesced.
  constexpr int kKeyCols = C::kKeys / 32, kOutCols = (D + 31) / 32;
  const int row0 = q0 + warp * 16;
  const typename C::MaskT* mbase = C::kMasked ? mask + b * mask_sb + h * mask_sh : nullptr;
  const float inv_scale = 1.f / scale;
  float acc[16][kOutCols], row_max[16], row_sum[16];  // the row statistics: alike in all lanes
#pragma unroll
  for (int rr = 0; rr < 16; ++rr) {
    row_max[rr] = -INFINITY;
    row_sum[rr] = 0.f;
#pragma unroll
    for (int c = 0; c < kOutCols; ++c) acc[rr][c] = 0.f;
  }

  // A causal CTA stops after the last key its last query row sees.
  const int key_end = C::kCausal ? min(Sk, q0 + C::kRows + causal_offset) : Sk;
  for (int key0 = 0; key0 < key_end; key0 += C::kKeys) {
    __syncthreads();  // the previous step is done with K and V
    LoadRows<C, D, C::kKeys>(ks, kb, kl.seq, key0, Sk);
    LoadRows<C, D, C::kKeys>(vs, vb, vl.seq, key0, Sk);
    // The scores start from mask / scale (-inf past the keys), so the MMA adds the mask.
#pragma unroll
    for (int rr = 0; rr < 16; ++rr) {
      const typename C::MaskT* mrow = C::kMasked ? mbase + min(row0 + rr, Sq - 1) * mask_sq : nullptr;
#pragma unroll
      for (int c = 0; c < kKeyCols; ++c) {
        const int key = key0 + lane + 32 * c;
        const bool hidden = key >= Sk || (C::kCausal && key > row0 + rr + causal_offset);
        ss[rr * S::kSLd + lane + 32 * c] =
            hidden ? -INFINITY : C::kMasked ? float(mrow[key]) * inv_scale : 0.f;
      }
    }
    __syncthreads();
    // S = mask / scale + Q K^T for this warp's 16 rows and the 64 keys.
#pragma unroll
    for (int t = 0; t < C::kKeys / 16; ++t) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
      wmma::load_matrix_sync(s, ss + t * 16, S::kSLd, wmma::mem_row_major);
#pragma unroll
      for (int d = 0; d < D; d += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> bt;
        wmma::load_matrix_sync(a, qs + warp * 16 * S::kLd + d, S::kLd);
        wmma::load_matrix_sync(bt, ks + t * 16 * S::kLd + d, S::kLd);
        wmma::mma_sync(s, a, bt, s);
      }
      wmma::store_matrix_sync(ss + t * 16, s, S::kSLd, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax, a row at a time across the warp.
#pragma unroll
    for (int rr = 0; rr < 16; ++rr) {
      float x[kKeyCols], step_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < kKeyCols; ++c) {
        x[c] = ss[rr * S::kSLd + lane + 32 * c] * scale;
        step_max = fmaxf(step_max, x[c]);
      }
#pragma unroll
      for (int o = 16; o > 0; o /= 2) step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffff, step_max, o));
      const float new_max = fmaxf(row_max[rr], step_max);
      const float base = new_max == -INFINITY ? 0.f : new_max;  // every key so far masked out
      float step_sum = 0.f;
#pragma unroll
      for (int c = 0; c < kKeyCols; ++c) {
        const float p = __expf(x[c] - base);
        step_sum += p;
        ps[rr * S::kPLd + lane + 32 * c] = __float2half(p);
      }
#pragma unroll
      for (int o = 16; o > 0; o /= 2) step_sum += __shfl_xor_sync(0xffffffff, step_sum, o);
      const float rescale = __expf(row_max[rr] - base);
      row_sum[rr] = row_sum[rr] * rescale + step_sum;
      row_max[rr] = new_max;
#pragma unroll
      for (int c = 0; c < kOutCols; ++c) acc[rr][c] *= rescale;
    }
    __syncwarp();
    // acc += P V, through the score buffer (WMMA's accumulator layout is opaque).
#pragma unroll
    for (int t = 0; t < D / 16; ++t) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      wmma::fill_fragment(o, 0.f);
#pragma unroll
      for (int j = 0; j < C::kKeys; j += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> bv;
        wmma::load_matrix_sync(a, ps + j, S::kPLd);
        wmma::load_matrix_sync(bv, vs + j * S::kLd + t * 16, S::kLd);
        wmma::mma_sync(o, a, bv, o);
      }
      wmma::store_matrix_sync(ss + t * 16, o, S::kSLd, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int rr = 0; rr < 16; ++rr) {
#pragma unroll
      for (int c = 0; c < kOutCols; ++c) {
        if (lane + 32 * c < D) acc[rr][c] += ss[rr * S::kSLd + lane + 32 * c];
      }
    }
    __syncwarp();
  }
#pragma unroll
  for (int rr = 0; rr < 16; ++rr) {
    if (row0 + rr < Sq) {
      half* o = out + b * ol.batch + h * ol.head + (row0 + rr) * ol.seq + lane;
      const float inv = 1.f / row_sum[rr];
#pragma unroll
      for (int c = 0; c < kOutCols; ++c) {
        if (lane + 32 * c < D) o[32 * c] = __float2half(acc[rr][c] * inv);
      }
    }
  }
}

// More than 48 KB of dynamic shared memory is an opt-in per kernel and device: once each, also
// when several threads (or devices) run the artifact at once.
constexpr int kMaxDevices = 64;

template <class C, int D>
void OptInSharedMemory(const char* symbol) {
  int device = 0;
  TVMOPT_CUDA_OK(symbol, cudaGetDevice(&device));
  auto opt_in = [&] {
    TVMOPT_CUDA_OK(symbol, cudaFuncSetAttribute(Attention<C, D>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                int(Smem<C, D>::kBytes)));
  };
  static std::once_flag once[kMaxDevices];
  if (device < kMaxDevices) {
    std::call_once(once[device], opt_in);
  } else {
    opt_in();
  }
}

// The shapes and layouts of one call, as Run reads them from its arguments.
struct Problem {
  int batch, heads, kv_heads, seq_q, seq_k, head_dim;
  int64_t mask_sb, mask_sh, mask_sq;
  int causal_offset;
  float scale;
  Layout q, k, v, out;
  int64_t q_offset, k_offset, v_offset;  // elements before the first of each tensor's rows
};

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

// The strides of a contiguous tensor holding [batch, heads, seq, dim] in the memory order
// `order` names: three digits, outermost first, of batch (0), heads (1) and sequence (2), the
// head dimension innermost: 21 (021) is [b, s, h, d] as the projections write it, 12 (012) is
// [b, h, s, d], 201 is [s, b, h, d] (torch.nn.MultiheadAttention's sequence-first tensors).
// A non-zero `pitch` puts the rows of heads * dim elements `pitch` elements apart (a column slice
// of a packed projection: heads must then be the innermost of the three).
inline Layout LayoutOf(const char* symbol, int64_t order, int64_t batch, int64_t heads,
                       int64_t seq, int64_t dim, int64_t pitch) {
  const int64_t sizes[3] = {batch, heads, seq};
  int64_t strides[3] = {0, 0, 0}, step = dim;
  const int axes[3] = {int(order / 100), int(order / 10 % 10), int(order % 10)};
  for (int i = 2; i >= 0; --i) {
    TVM_FFI_ICHECK(axes[i] >= 0 && axes[i] < 3 && strides[axes[i]] == 0)
        << symbol << ": layout " << order << " is not an order of batch, heads and sequence";
    strides[axes[i]] = step;
    step *= sizes[axes[i]];
    if (i == 2 && pitch) {
      TVM_FFI_ICHECK(axes[2] == 1 && pitch >= step)
          << symbol << ": rows " << pitch << " apart cannot hold " << step << " elements";
      step = pitch;
    }
  }
  return {strides[0], strides[1], strides[2]};
}

// q [B, Sq, H, D] and out like it, k and v [B, Sk, Hkv, D] (any shape of that many elements),
// each in the memory order its layout code names (LayoutOf), q, k and v from an element offset
// and with rows a pitch apart (0: dense); `mask` is null for an unmasked instance, its strides in
// elements, 0 where it broadcasts. Sequence lengths come from the tensors' sizes, so one
// instance serves every batch and sequence length.
template <class C, int... HeadDims>
void Run(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
         tvm::ffi::TensorView v, const tvm::ffi::TensorView* mask, int64_t batch, int64_t heads,
         int64_t kv_heads, int64_t head_dim, int64_t q_layout, int64_t k_layout,
         int64_t v_layout, int64_t out_layout, int64_t q_pitch, int64_t k_pitch,
         int64_t v_pitch, int64_t q_offset, int64_t k_offset, int64_t v_offset,
         int64_t mask_batch_stride,
         int64_t mask_head_stride, int64_t mask_query_stride, int64_t causal_offset,
         double scale, tvm::ffi::TensorView out) {
  TVM_FFI_ICHECK(batch > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0)
      << symbol << ": " << heads << " heads cannot share " << kv_heads << " K/V heads";
  // Elements per row of each tensor: its heads' (dense) or its pitch (a packed projection).
  const int64_t q_row = q_pitch ? q_pitch : heads * head_dim;
  const int64_t k_row = k_pitch ? k_pitch : kv_heads * head_dim;
  const int64_t v_row = v_pitch ? v_pitch : kv_heads * head_dim;
  TVM_FFI_ICHECK(q.numel() % (batch * q_row) == 0 && k.numel() % (batch * k_row) == 0 &&
                 v.numel() / v_row == k.numel() / k_row &&
                 out.numel() == q.numel() / q_row * heads * head_dim)
      << symbol << ": q, k, v and out do not hold [batch, seq, heads, " << head_dim << "]";
  Problem p;
  p.batch = int(batch), p.heads = int(heads), p.kv_heads = int(kv_heads);
  p.head_dim = int(head_dim);
  p.seq_q = int(q.numel() / (batch * q_row));
  p.seq_k = int(k.numel() / (batch * k_row));
  p.mask_sb = mask_batch_stride, p.mask_sh = mask_head_stride, p.mask_sq = mask_query_stride;
  p.causal_offset = int(causal_offset), p.scale = float(scale);
  p.q = LayoutOf(symbol, q_layout, batch, heads, p.seq_q, head_dim, q_pitch);
  p.k = LayoutOf(symbol, k_layout, batch, kv_heads, p.seq_k, head_dim, k_pitch);
  p.v = LayoutOf(symbol, v_layout, batch, kv_heads, p.seq_k, head_dim, v_pitch);
  p.out = LayoutOf(symbol, out_layout, batch, heads, p.seq_q, head_dim, 0);
  p.q_offset = q_offset, p.k_offset = k_offset, p.v_offset = v_offset;
  const auto* mask_data =
      C::kMasked ? static_cast<const typename C::MaskT*>(mask->data_ptr()) : nullptr;
  Dispatch<C, HeadDims...>(symbol, q, k, v, mask_data, out, p);
}

}  // namespace attention
}  // namespace tvmopt
