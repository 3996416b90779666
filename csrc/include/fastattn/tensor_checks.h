#pragma once

// Guards the kernels of several ops share, for direct torch.ops calls (the Python
// wrappers check first, with friendlier messages): a tensor of another shape would be read
// out of bounds, one of another dtype or device would hand a kernel the wrong pointer.

#include <ATen/ATen.h>

#include <optional>

namespace fastattn {

// What a backward is handed back by autograd (grad_out, the forward's saved outputs).
inline void check_tensor_like(const at::Tensor& x, const char* op, const char* name, at::IntArrayRef sizes,
                              at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK_VALUE(x.sizes() == sizes, op, ": ", name, " must have shape ", sizes, ", got ", x.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.device() == device, op, ": ", name, " must be on ", device, ", got ", x.device());
}

// An optional (B, T) bool key padding mask on `device`.
inline void check_key_padding_mask(const std::optional<at::Tensor>& key_padding_mask, const char* op, int64_t batch,
                                   int64_t length, const at::Device& device) {
  if (!key_padding_mask) return;
  const at::Tensor& mask = *key_padding_mask;
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op, ": key_padding_mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == length, op,
                    ": key_padding_mask must be (B, T) = (", batch, ", ", length, "), got ", mask.sizes());
  TORCH_CHECK_VALUE(mask.device() == device, op, ": key_padding_mask must be on ", device, ", got ", mask.device());
}

}  // namespace fastattn
