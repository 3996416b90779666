#pragma once

// Host-side pieces of sparse_attention: the guards both devices run, and the transposed
// (per-key) lists the CUDA backward reduces over.

#include <ATen/ATen.h>

namespace fastattn::sparse_host {

// Guards for direct torch.ops calls (fastattn.ops.sparse_attention checks with friendlier
// messages first). The value check reads the indices, so it runs here, not in Python.
inline void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                        q.size(1) == k.size(1) && q.size(3) == k.size(3),
                    "sparse_attention: q (B, H, Tq, D), k and v (B, H, Tk, D) do not fit: ", q.sizes(), ", ",
                    k.sizes(), ", ", v.sizes());
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
                   "sparse_attention: q, k and v must share a dtype");
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong,
                   "indices must be int32 or int64, got ", indices.scalar_type());
  TORCH_CHECK_VALUE(indices.dim() == 4 && (indices.size(0) == 1 || indices.size(0) == q.size(0)) &&
                        (indices.size(1) == 1 || indices.size(1) == q.size(1)) && indices.size(2) == q.size(2),
                    "indices must be (B or 1, H or 1, Tq, L), got ", indices.sizes(), " for q ", q.sizes());
  if (indices.numel() > 0) {
    const auto [low, high] = at::aminmax(indices);
    TORCH_CHECK_VALUE(low.item<int64_t>() >= -1 && high.item<int64_t>() < k.size(2),
                      "indices must be key positions in [0, ", k.size(2), ") or -1 for an empty slot, got values from ",
                      low.item<int64_t>(), " to ", high.item<int64_t>());
  }
}

// The per-key lists of the backward: for index set s = (bi, hi), the slots (i * L + l) that
// name key j are perm[s][offsets[s][j] .. offsets[s][j + 1]), in increasing order of slot,
// so every key's gradient sums in one fixed order.
struct KeyLists {
  at::Tensor perm;     // (S, Tq * L) int64
  at::Tensor offsets;  // (S, Tk + 1) int64
};

inline KeyLists key_lists(const at::Tensor& indices, int64_t keys) {
  const at::Tensor flat = indices.reshape({indices.size(0) * indices.size(1), -1}).to(at::kLong);
  const at::Tensor key = at::where(flat < 0, at::full_like(flat, keys), flat);  // empty slots sort last
  const auto [sorted, perm] = at::sort(key, /*stable=*/true, /*dim=*/-1, /*descending=*/false);
  const at::Tensor boundaries = at::arange(keys + 1, flat.options()).expand({flat.size(0), keys + 1}).contiguous();
  return {perm.contiguous(), at::searchsorted(sorted.contiguous(), boundaries).contiguous()};
}

}  // namespace fastattn::sparse_host
