#pragma once

// Host-side pieces of fixed_attention shared by the CPU and CUDA kernels.

#include <ATen/ATen.h>

#include <optional>

#include "fastattn/tensor_checks.h"

namespace fastattn {

// Guards for direct torch.ops calls; fastattn.ops.fixed_attention validates arguments
// with friendlier messages before it gets here.
inline void check_fixed_attention_inputs(const at::Tensor& logits, const at::Tensor& v,
                                         const std::optional<at::Tensor>& key_padding_mask) {
  TORCH_CHECK_VALUE(logits.dim() == 3 && logits.size(1) == logits.size(2),
                    "fixed_attention: logits must be (H, T, T), got ", logits.sizes());
  TORCH_CHECK_VALUE(v.dim() == 4 && v.size(1) == logits.size(0) && v.size(2) == logits.size(1),
                    "fixed_attention: v must be (B, H, T, D) with H, T of logits ", logits.sizes(),
                    ", got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == logits.scalar_type(),
                   "fixed_attention: v and logits must share a dtype, got ", v.scalar_type(),
                   " and ", logits.scalar_type());
  TORCH_CHECK_VALUE(v.device() == logits.device(), "fixed_attention: v and logits must be on one device");
  check_key_padding_mask(key_padding_mask, "fixed_attention", v.size(0), v.size(2), v.device());
}

// Rows of softmax statistics: one set shared by the whole batch without a mask, one per
// batch item with a mask (its padding changes which keys a row may attend to).
inline int64_t softmax_sets(const at::Tensor& v, const std::optional<at::Tensor>& key_padding_mask) {
  return key_padding_mask.has_value() ? v.size(0) : 1;
}

// Statistics are float32 for float32 and the half types, float64 for float64.
inline at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The backward's guards: the forward's, and grad_out, out and lse as the forward made them.
inline void check_fixed_attention_backward_inputs(const at::Tensor& grad_out, const at::Tensor& logits,
                                                  const at::Tensor& v,
                                                  const std::optional<at::Tensor>& key_padding_mask,
                                                  const at::Tensor& out, const at::Tensor& lse) {
  check_fixed_attention_inputs(logits, v, key_padding_mask);
  check_tensor_like(grad_out, "fixed_attention_backward", "grad_out", v.sizes(), v.scalar_type(), v.device());
  check_tensor_like(out, "fixed_attention_backward", "out", v.sizes(), v.scalar_type(), v.device());
  check_tensor_like(lse, "fixed_attention_backward", "lse", {softmax_sets(v, key_padding_mask), v.size(1), v.size(2)},
                    accumulate_type(v.scalar_type()), v.device());
}

}  // namespace fastattn
