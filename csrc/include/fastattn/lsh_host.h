#pragma once

// Host-side pieces of the LSH ops shared by the CPU and CUDA kernels: reading the string
// arguments, guards for direct torch.ops calls, and the per-(batch, head) norm maxima.

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "fastattn/mips_math.h"

namespace fastattn::lsh_host {

inline mips::Scheme parse_scheme(const std::string& name) {
  if (name == "sign_alsh") return mips::Scheme::SignAlsh;
  if (name == "xbox") return mips::Scheme::Xbox;
  if (name == "xbox_qnf") return mips::Scheme::XboxQnf;
  if (name == "simple_lsh") return mips::Scheme::SimpleLsh;
  if (name == "simple_alsh") return mips::Scheme::SimpleAlsh;
  TORCH_CHECK_VALUE(false, "scheme must be one of sign_alsh, xbox, xbox_qnf, simple_lsh, simple_alsh; got '", name,
                    "'");
}

inline mips::Role parse_role(const std::string& name) {
  TORCH_CHECK_VALUE(name == "query" || name == "key", "role must be 'query' or 'key', got '", name, "'");
  return name == "query" ? mips::Role::Query : mips::Role::Key;
}

// Largest L2 norm per (batch, head) over the non-padded positions of x (B, H, T, D), in
// the accumulation dtype; 0 where there is none.
inline at::Tensor max_norms(const at::Tensor& x, const std::optional<at::Tensor>& key_padding_mask,
                            at::ScalarType acc_dtype) {
  if (x.size(2) == 0) return at::zeros({x.size(0), x.size(1)}, x.options().dtype(acc_dtype));
  at::Tensor norms = at::linalg_vector_norm(x.to(acc_dtype), 2, {-1});
  if (key_padding_mask) norms = norms.masked_fill(key_padding_mask->unsqueeze(1), 0);
  return norms.amax(-1);
}

// Everything the transform of one (x, role) needs besides x itself.
struct TransformSetup {
  mips::Scheme scheme;
  mips::Role role;
  int m;
  double U;
  at::Tensor key_max;    // (B, H): M
  at::Tensor query_max;  // (B, H): Mq
};

inline TransformSetup transform_setup(const at::Tensor& x, const std::string& scheme_name,
                                      const std::string& role_name, const std::optional<at::Tensor>& mask,
                                      const std::optional<at::Tensor>& keys, int64_t m, double U,
                                      at::ScalarType acc_dtype) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be (B, H, T, D), got ", x.sizes());
  const mips::Scheme scheme = parse_scheme(scheme_name);
  const mips::Role role = parse_role(role_name);
  TORCH_CHECK_VALUE(scheme != mips::Scheme::SignAlsh || (m >= 1 && m <= mips::kMaxExtra),
                    "m must be between 1 and ", mips::kMaxExtra, ", got ", m);
  const bool needs_keys = role == mips::Role::Query && scheme == mips::Scheme::XboxQnf;
  TORCH_CHECK_VALUE(!needs_keys || (keys && keys->sizes() == x.sizes()),
                    "keys (the keys of the same batch and heads, shaped like x) is required for xbox_qnf queries");
  const at::Tensor zeros = at::zeros({x.size(0), x.size(1)}, x.options().dtype(acc_dtype));
  at::Tensor key_max = role == mips::Role::Key ? max_norms(x, mask, acc_dtype)
                       : needs_keys            ? max_norms(*keys, mask, acc_dtype)
                                               : zeros;
  at::Tensor query_max = role == mips::Role::Query && scheme == mips::Scheme::SimpleAlsh
                             ? max_norms(x, mask, acc_dtype)
                             : zeros;
  return {scheme, role, static_cast<int>(m), U, key_max.contiguous(), query_max.contiguous()};
}

// Guards of topk_keys shared by both devices; returns the number of bits that count.
inline int check_topk_inputs(const at::Tensor& q_codes, const at::Tensor& k_codes, int64_t L,
                             const std::string& mode, const std::optional<at::Tensor>& q,
                             const std::optional<at::Tensor>& k, std::optional<int64_t> n_bits) {
  TORCH_CHECK_VALUE(mode == "hamming" || mode == "bucket", "mode must be 'hamming' or 'bucket', got '", mode, "'");
  TORCH_CHECK_VALUE(q_codes.dim() == 4 && k_codes.dim() == 4 && q_codes.size(0) == k_codes.size(0) &&
                        q_codes.size(1) == k_codes.size(1) && q_codes.size(3) == k_codes.size(3),
                    "q_codes (B, H, Tq, W) and k_codes (B, H, Tk, W) must agree in B, H and W, got ",
                    q_codes.sizes(), " and ", k_codes.sizes());
  TORCH_CHECK_TYPE(q_codes.scalar_type() == at::kLong && k_codes.scalar_type() == at::kLong,
                   "q_codes and k_codes must be int64");
  TORCH_CHECK_VALUE(L >= 0, "L must be non-negative, got ", L);
  const int64_t words = q_codes.size(3);
  const int64_t bits = n_bits.value_or(64 * words);
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 64 * words && bits <= 256,
                    "n_bits must be between 1 and 64 W = ", 64 * words, " (at most 256), got ", bits);
  if (mode == "bucket") {
    TORCH_CHECK_VALUE(q && k && q->dim() == 4 && k->dim() == 4 && q->size(2) == q_codes.size(2) &&
                          k->size(2) == k_codes.size(2) && q->size(3) == k->size(3),
                      "mode='bucket' ranks candidates by q . k: q (B, H, Tq, D) and k (B, H, Tk, D) are required");
  }
  return static_cast<int>(bits);
}

}  // namespace fastattn::lsh_host
