#pragma once

// Host-side pieces of sparse_attention: the guards both devices run, and the transposed
// (per-key) lists the CUDA backward reduces over.

#include <ATen/ATen.h>

#include "fastattn/tensor_checks.h"

namespace fastattn::sparse_host {

// Guards for direct torch.ops calls (fastattn.ops.sparse_attention checks with friendlier
// messages first): shapes, dtypes and devices, read from the metadata alone.
inline void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                        q.size(1) == k.size(1) && q.size(3) == k.size(3),
                    "sparse_attention: q (B, H, Tq, D), k and v (B, H, Tk, D) do not fit: ", q.sizes(), ", ",
                    k.sizes(), ", ", v.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                   "sparse_attention: q, k and v must share a dtype");
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device() && indices.device() == q.device(),
                    "sparse_attention: q, k, v and indices must be on one device");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong,
                   "indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 4 && (indices.size(0) == 1 || indices.size(0) == q.size(0)) &&
                        (indices.size(1) == 1 || indices.size(1) == q.size(1)) && indices.size(2) == q.size(2),
                    "indices must be (B or 1, H or 1, Tq, L), got ", indices.sizes(), " for q ", q.sizes());
}

// The value check reads the indices, so it waits for them: a host synchronisation, which
// CUDA graph capture forbids (see sparse_attention.cu for what happens without it).
inline void check_index_values(const at::Tensor& indices, int64_t keys) {
  if (indices.numel() == 0) return;
  const auto [low, high] = at::aminmax(indices);
  const int64_t lowest = low.item<int64_t>(), highest = high.item<int64_t>();
  TORCH_CHECK_VALUE(lowest >= -1 && highest < keys, "indices must be key positions in [0, ", keys,
                    ") or -1 for an empty slot, got values from ", lowest, " to ", highest);
}

// The backward's guards on what autograd hands back: grad_out and out shaped like q, lse
// (B, H, Tq) in the accumulation dtype.
inline void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                                  const at::Tensor& lse) {
  check_tensor_like(grad_out, "sparse_attention_backward", "grad_out", q.sizes(), q.scalar_type(), q.device());
  check_tensor_like(out, "sparse_attention_backward", "out", q.sizes(), q.scalar_type(), q.device());
  check_tensor_like(lse, "sparse_attention_backward", "lse", {q.size(0), q.size(1), q.size(2)},
                    q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat, q.device());
}

// The per-key lists of the backward: for index set s = (bi, hi), the slots (i * L + l) that
// name key j are perm[s][offsets[s][j] .. offsets[s][j + 1]), in increasing order of slot,
// so every key's gradient sums in one fixed order.
struct KeyLists {
  at::Tensor perm;     // (S, Tq * L) int64
  at::Tensor offsets;  // (S, Tk + 1) int64
};

inline KeyLists key_lists(const at::Tensor& indices, int64_t keys) {
  // Sizes spelt out: reshape cannot infer a -1 dimension of an empty tensor (B = 0 or H = 0).
  const at::Tensor flat =
      indices.reshape({indices.size(0) * indices.size(1), indices.size(2) * indices.size(3)}).to(at::kLong);
  const at::Tensor key = at::where(flat < 0, at::full_like(flat, keys), flat);  // empty slots sort last
  const auto [sorted, perm] = at::sort(key, /*stable=*/true, /*dim=*/-1, /*descending=*/false);
  const at::Tensor boundaries = at::arange(keys + 1, flat.options()).expand({flat.size(0), keys + 1}).contiguous();
  return {perm.contiguous(), at::searchsorted(sorted.contiguous(), boundaries).contiguous()};
}

}  // namespace fastattn::sparse_host
