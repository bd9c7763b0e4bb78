// What every attention kernel of the library reads from its arguments: the shapes, the
// layouts and the mask's strides of one call (the arguments are attention.py's PARAMS), and the
// Run that reads them and hands the Problem to a kernel family's Launch.
#pragma once
#include <cstdint>
#include <mutex>

#include "ffi.cuh"

namespace tvmopt {
namespace attention {

constexpr int kMaxDevices = 64;

// Runs `fn` once per CUDA device, also when several threads run the artifact at once: what a
// kernel's attributes need (more than 48 KB of dynamic shared memory is an opt-in per kernel and
// device). Each call site (each lambda type) has its own flags.
template <class Fn>
void OncePerDevice(const char* symbol, Fn&& fn) {
  int device = 0;
  TVMOPT_CUDA_OK(symbol, cudaGetDevice(&device));
  static std::once_flag once[kMaxDevices];
  if (device < kMaxDevices) {
    std::call_once(once[device], fn);
  } else {
    fn();
  }
}

// Where a [batch, heads, seq, D] tensor's rows are: element strides of batch, head and sequence
// (the head dimension is contiguous).
struct Layout {
  int64_t batch, head, seq;
};

// The shapes and layouts of one call, as Run reads them from its arguments.
struct Problem {
  int batch, heads, kv_heads, seq_q, seq_k, head_dim;
  int64_t mask_sb, mask_sh, mask_sq;
  int causal_offset;
  float scale;
  Layout q, k, v, out;
  int64_t q_offset, k_offset, v_offset;  // elements before the first of each tensor's rows
};

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
// instance serves every batch and sequence length. `Kernel::Launch` runs the problem read.
template <class Kernel>
void Run(const char* symbol, tvm::ffi::TensorView q, tvm::ffi::TensorView k,
         tvm::ffi::TensorView v, const tvm::ffi::TensorView* mask, int64_t batch, int64_t heads,
         int64_t kv_heads, int64_t head_dim, int64_t q_layout, int64_t k_layout,
         int64_t v_layout, int64_t out_layout, int64_t q_pitch, int64_t k_pitch,
         int64_t v_pitch, int64_t q_offset, int64_t k_offset, int64_t v_offset,
         int64_t mask_batch_stride,
         int64_t mask_head_stride, int64_t mask_query_stride, int64_t causal_offset,
         double scale, tvm::ffi::TensorView workspace, tvm::ffi::TensorView out) {
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
  Kernel::Launch(symbol, q, k, v, mask, workspace, out, p);
}

}  // namespace attention
}  // namespace tvmopt
