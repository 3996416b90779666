#pragma once

// What every CUDA op accepts: float32, float16 and bfloat16, computed in float32.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#define FASTATTN_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...)             \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                    \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)      \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)   \
                             AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace fastattn::cuda {

inline void check_cuda_float(const at::Tensor& x, const char* what) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, what,
                   " on CUDA must be float32, float16 or bfloat16, got ", dtype);
}

}  // namespace fastattn::cuda
