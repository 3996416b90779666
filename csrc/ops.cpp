// Every op schema of fastattn, in one place. Kernels register per device in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; autograd, fake kernels and the public
// Python wrappers live in python/fastattn/ops/<op>.py.

#include <torch/library.h>

TORCH_LIBRARY(fastattn, m) {
  // Fixed-weight attention (SPEC section 5). lse is the per-row log-sum-exp of the
  // masked softmax, (1, H, T) without a mask and (B, H, T) with one; the backward
  // rebuilds the probabilities from it instead of storing them.
  m.def("fixed_attention_forward(Tensor logits, Tensor v, Tensor? key_padding_mask) -> (Tensor out, Tensor lse)");
  m.def(
      "fixed_attention_backward(Tensor grad_out, Tensor logits, Tensor v, Tensor? key_padding_mask, "
      "Tensor out, Tensor lse) -> (Tensor grad_logits, Tensor grad_v)");
}
