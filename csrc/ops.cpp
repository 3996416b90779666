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

  // LSH key selection (SPEC sections 1 to 3). Integer or non-differentiable outputs.
  m.def(
      "mips_transform(Tensor x, str scheme, str role, Tensor? key_padding_mask, Tensor? keys, int m, float U) "
      "-> Tensor");
  m.def(
      "alsh_hash(Tensor x, str scheme, str role, Tensor projections, Tensor? key_padding_mask, Tensor? keys, "
      "int m, float U) -> Tensor");
  m.def(
      "topk_keys(Tensor q_codes, Tensor k_codes, int L, Tensor? key_padding_mask, str mode, Tensor? q, Tensor? k, "
      "int? n_bits) -> Tensor");
  // Shared-QK self exclusion, in place: empties each row's slots that name the row's own
  // query, unless the row lists no other key.
  m.def("drop_own_key_(Tensor(a!) indices) -> ()");

  // Masked sparse attention (SPEC section 4): each query attends to its list of keys.
  // lse is the per-row log-sum-exp the backward normalises recomputed scores with.
  m.def("sparse_attention_forward(Tensor q, Tensor k, Tensor v, Tensor indices, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "sparse_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor indices, float scale, "
      "Tensor out, Tensor lse) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
