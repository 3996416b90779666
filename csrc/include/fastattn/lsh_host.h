#pragma once

// Host-side pieces of the LSH ops shared by the CPU and CUDA kernels: reading the string
// arguments, guards for direct torch.ops calls, and the per-(batch, head) norm maxima.

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "fastattn/lsh_select.h"
#include "fastattn/mips_math.h"
#include "fastattn/tensor_checks.h"

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

// Largest value per (batch, head) of the (B, H, T) sq_norms over the non-padded positions;
// 0 where there is none.
inline at::Tensor max_over_positions(const at::Tensor& sq_norms, const std::optional<at::Tensor>& key_padding_mask) {
  if (sq_norms.size(2) == 0) return at::zeros({sq_norms.size(0), sq_norms.size(1)}, sq_norms.options());
  const at::Tensor present =
      key_padding_mask ? sq_norms.masked_fill(key_padding_mask->unsqueeze(1), 0) : sq_norms;
  return present.amax(-1);
}

// Everything the transform of one (x, role) needs besides x itself.
struct TransformSetup {
  mips::Scheme scheme;
  mips::Role role;
  int m;
  double U;
  at::Tensor sq_norms;      // (B, H, T): ||x||^2 of every row, as the rows use it
  at::Tensor key_max_sq;    // (B, H): M^2
  at::Tensor query_max_sq;  // (B, H): Mq^2
};

// row_sq_norms(t) gives ||t_row||^2 of every row of a (B, H, T, D) tensor as (B, H, T) in
// acc_dtype, by the device's own reduction; the maxima come from those very values
// (mips_math.h says why).
template <class RowSqNorms>
TransformSetup transform_setup(const at::Tensor& x, const std::string& scheme_name, const std::string& role_name,
                               const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& keys,
                               int64_t m, double U, at::ScalarType acc_dtype, const RowSqNorms& row_sq_norms) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be (B, H, T, D), got ", x.sizes());
  const mips::Scheme scheme = parse_scheme(scheme_name);
  const mips::Role role = parse_role(role_name);
  TORCH_CHECK_VALUE(scheme != mips::Scheme::SignAlsh || (m >= 1 && m <= mips::kMaxExtra),
                    "m must be between 1 and ", mips::kMaxExtra, ", got ", m);
  check_key_padding_mask(mask, "mips_transform", x.size(0), x.size(2), x.device());
  const bool needs_keys = role == mips::Role::Query && scheme == mips::Scheme::XboxQnf;
  TORCH_CHECK_VALUE(!needs_keys || (keys && keys->sizes() == x.sizes() && keys->device() == x.device()),
                    "keys (the keys of the same batch and heads, shaped like x, on its device) is required for "
                    "xbox_qnf queries");
  TORCH_CHECK_TYPE(!needs_keys || keys->scalar_type() == x.scalar_type(), "keys must have the dtype of x (",
                   x.scalar_type(), "), got ", keys->scalar_type());
  const at::Tensor sq_norms = row_sq_norms(x);
  const at::Tensor zeros = at::zeros({x.size(0), x.size(1)}, sq_norms.options());
  const at::Tensor key_max_sq = role == mips::Role::Key ? max_over_positions(sq_norms, mask)
                                : needs_keys            ? max_over_positions(row_sq_norms(*keys), mask)
                                                        : zeros;
  const at::Tensor query_max_sq = role == mips::Role::Query && scheme == mips::Scheme::SimpleAlsh
                                      ? max_over_positions(sq_norms, mask)
                                      : zeros;
  TORCH_CHECK(sq_norms.scalar_type() == acc_dtype, "row_sq_norms must give ", acc_dtype);
  return {scheme, role, static_cast<int>(m), U, sq_norms.contiguous(), key_max_sq.contiguous(),
          query_max_sq.contiguous()};
}

// The projections of alsh_hash: (n_bits, width), 1 <= n_bits <= 256, floating, on x's device.
inline void check_projections(const at::Tensor& projections, int64_t width, const at::Tensor& x) {
  TORCH_CHECK_VALUE(projections.dim() == 2 && projections.size(1) == width && projections.size(0) >= 1 &&
                        projections.size(0) <= lsh::kMaxBits,
                    "projections must be (n_bits, D + e) = (1..", lsh::kMaxBits, ", ", width, "), got ",
                    projections.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(projections.scalar_type()), "projections must be floating, got ",
                   projections.scalar_type());
  TORCH_CHECK_VALUE(projections.device() == x.device(), "projections must be on the device of x (", x.device(),
                    "), got ", projections.device());
}

// Guards of topk_keys shared by both devices; returns the number of bits that count.
inline int check_topk_inputs(const at::Tensor& q_codes, const at::Tensor& k_codes, int64_t L,
                             const std::optional<at::Tensor>& mask, const std::string& mode,
                             const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                             std::optional<int64_t> n_bits) {
  TORCH_CHECK_VALUE(mode == "hamming" || mode == "bucket", "mode must be 'hamming' or 'bucket', got '", mode, "'");
  TORCH_CHECK_VALUE(q_codes.dim() == 4 && k_codes.dim() == 4 && q_codes.size(0) == k_codes.size(0) &&
                        q_codes.size(1) == k_codes.size(1) && q_codes.size(3) == k_codes.size(3),
                    "q_codes (B, H, Tq, W) and k_codes (B, H, Tk, W) must agree in B, H and W, got ",
                    q_codes.sizes(), " and ", k_codes.sizes());
  TORCH_CHECK_TYPE(q_codes.scalar_type() == at::kLong && k_codes.scalar_type() == at::kLong,
                   "q_codes and k_codes must be int64");
  TORCH_CHECK_VALUE(k_codes.device() == q_codes.device(), "q_codes and k_codes must be on one device");
  TORCH_CHECK_VALUE(L >= 0, "L must be non-negative, got ", L);
  const int64_t words = q_codes.size(3);
  // The kernels hold a query's code in kMaxWords registers.
  TORCH_CHECK_VALUE(words <= lsh::kMaxWords, "codes may have at most ", lsh::kMaxWords, " words (",
                    lsh::kMaxBits, " bits), got ", words);
  const int64_t bits = n_bits.value_or(64 * words);
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 64 * words && bits <= lsh::kMaxBits,
                    "n_bits must be between 1 and 64 W = ", 64 * words, " (at most ", lsh::kMaxBits, "), got ", bits);
  check_key_padding_mask(mask, "topk_keys", k_codes.size(0), k_codes.size(2), k_codes.device());
  if (mode == "bucket") {
    TORCH_CHECK_VALUE(q && k && q->dim() == 4 && k->dim() == 4 &&
                          q->sizes().slice(0, 3) == q_codes.sizes().slice(0, 3) &&
                          k->sizes().slice(0, 3) == k_codes.sizes().slice(0, 3) && q->size(3) == k->size(3),
                      "mode='bucket' ranks candidates by q . k: q (B, H, Tq, D) and k (B, H, Tk, D) matching the "
                      "codes are required");
    TORCH_CHECK_VALUE(q->device() == q_codes.device() && k->device() == q_codes.device(),
                      "q and k must be on the device of the codes (", q_codes.device(), ")");
    TORCH_CHECK_TYPE(at::isFloatingType(q->scalar_type()) && k->scalar_type() == q->scalar_type(),
                     "q and k must be floating and share a dtype, got ", q->scalar_type(), " and ", k->scalar_type());
  }
  return static_cast<int>(bits);
}

}  // namespace fastattn::lsh_host
