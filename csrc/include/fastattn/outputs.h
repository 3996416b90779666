#pragma once

// Allocation of kernel outputs. With FASTATTN_POISON_OUTPUTS=1 in the environment (the
// test suite sets it) every output starts as NaN (or -1 for integers), so an element a
// kernel forgets to write shows up in the tests instead of passing as stale memory.

#include <ATen/ATen.h>

namespace fastattn {

bool poison_outputs();

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs()) {
    if (at::isFloatingType(options.dtype().toScalarType())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      out.fill_(-1);
    }
  }
  return out;
}

}  // namespace fastattn
