// fixed_attention on the CPU: the masked softmax through the shared math of
// softmax_math.h, the products with ATen's matrix multiplication.
//
// Without a key padding mask the probabilities P (T, T) of a head are built once and
// shared by the whole batch: the forward is one product P @ V[:, h], and the gradient
// of the logits, summed over the batch, is P * (dO V^T - delta) with the batch folded
// into the inner dimension of a single product. With a mask, each batch item has its
// own P, and the batch sum runs in a fixed order (deterministic).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fastattn/fixed_attention.h"
#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 16;

// lse[s, h, i] over the keys j that batch item s (or, with s_count == 1, every item)
// may attend to.
template <class scalar_t>
at::Tensor row_logsumexp(const at::Tensor& logits, const bool* key_padding, int64_t s_count) {
  const int64_t H = logits.size(0), T = logits.size(1);
  at::Tensor lse = new_output({s_count, H, T}, logits.options());
  const auto l = logits.accessor<scalar_t, 3>();
  scalar_t* lse_data = lse.data_ptr<scalar_t>();
  at::parallel_for(0, s_count * H * T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t s = row / (H * T), h = (row / T) % H, i = row % T;
      const bool* padding = key_padding ? key_padding + s * T : nullptr;
      math::SoftmaxState<scalar_t> state;
      for (int64_t j = 0; j < T; ++j) {
        if (!padding || !padding[j]) math::softmax_add(state, l[h][i][j]);
      }
      lse_data[row] = math::softmax_lse(state);
    }
  });
  return lse;
}

// P[i, j] of head h for softmax set s, zero on padded keys.
template <class scalar_t>
at::Tensor probabilities(const at::Tensor& logits, const at::Tensor& lse, const bool* key_padding,
                         int64_t s, int64_t h) {
  const int64_t T = logits.size(1);
  at::Tensor probs = at::empty({T, T}, logits.options());
  const auto l = logits.accessor<scalar_t, 3>();
  const auto row_lse = lse.accessor<scalar_t, 3>();
  const bool* padding = key_padding ? key_padding + s * T : nullptr;
  scalar_t* p = probs.data_ptr<scalar_t>();
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t lse_i = row_lse[s][h][i];
      for (int64_t j = 0; j < T; ++j) {
        p[i * T + j] = (padding && padding[j]) ? scalar_t(0) : math::softmax_prob(l[h][i][j], lse_i);
      }
    }
  });
  return probs;
}

// grad_logits += P * (grad_probs - delta[:, None]), element by element.
template <class scalar_t>
void accumulate_logit_grad(at::Tensor& grad_logits, const at::Tensor& probs, const at::Tensor& grad_probs,
                           const at::Tensor& delta) {
  const int64_t T = probs.size(0);
  scalar_t* g = grad_logits.data_ptr<scalar_t>();
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* dp = grad_probs.data_ptr<scalar_t>();
  const scalar_t* d = delta.data_ptr<scalar_t>();
  at::parallel_for(0, T, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t j = 0; j < T; ++j) {
        g[i * T + j] += math::softmax_logit_grad(p[i * T + j], dp[i * T + j], d[i]);
      }
    }
  });
}

const bool* padding_data(const std::optional<at::Tensor>& mask_contiguous) {
  return mask_contiguous ? mask_contiguous->data_ptr<bool>() : nullptr;
}

std::optional<at::Tensor> contiguous_mask(const std::optional<at::Tensor>& key_padding_mask) {
  if (!key_padding_mask) return std::nullopt;
  return key_padding_mask->contiguous();
}

void check_cpu_dtype(const at::Tensor& logits) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
                   "fixed_attention on the CPU takes float32 or float64, got ", logits.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_forward_cpu(const at::Tensor& logits, const at::Tensor& v,
                                                               const std::optional<at::Tensor>& key_padding_mask) {
  check_fixed_attention_inputs(logits, v, key_padding_mask);
  check_cpu_dtype(logits);
  const int64_t B = v.size(0), H = v.size(1), T = v.size(2), D = v.size(3);
  const int64_t s_count = softmax_sets(v, key_padding_mask);
  const auto mask = contiguous_mask(key_padding_mask);
  at::Tensor out = new_output({B, H, T, D}, v.options());
  at::Tensor lse;
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_forward_cpu", [&] {
    lse = row_logsumexp<scalar_t>(logits, padding_data(mask), s_count);
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t s = 0; s < s_count; ++s) {
        const at::Tensor probs = probabilities<scalar_t>(logits, lse, padding_data(mask), s, h);
        if (s_count == 1) {
          out.select(1, h).copy_(at::matmul(probs, v.select(1, h)));
        } else {
          out[s][h].copy_(at::mm(probs, v[s][h]));
        }
      }
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& logits, const at::Tensor& v,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse) {
  check_fixed_attention_inputs(logits, v, key_padding_mask);
  check_cpu_dtype(logits);
  const int64_t B = v.size(0), H = v.size(1), T = v.size(2), D = v.size(3);
  const int64_t s_count = softmax_sets(v, key_padding_mask);
  const auto mask = contiguous_mask(key_padding_mask);
  at::Tensor grad_logits = new_output({H, T, T}, logits.options());
  at::Tensor grad_v = new_output({B, H, T, D}, v.options());
  // delta[b, h, i] = sum_j P_ij dL/dP_ij = dO_i . out_i
  const at::Tensor delta = (grad_out * out).sum(-1);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_backward_cpu", [&] {
    for (int64_t h = 0; h < H; ++h) {
      at::Tensor grad_logits_h = grad_logits[h].zero_();
      if (s_count == 1) {
        const at::Tensor probs = probabilities<scalar_t>(logits, lse, nullptr, 0, h);
        grad_v.select(1, h).copy_(at::matmul(probs.t(), grad_out.select(1, h)));
        // sum_b dO_b V_b^T as one product: the batch joins the inner dimension.
        const at::Tensor grad_out_h = grad_out.select(1, h).permute({1, 0, 2}).reshape({T, B * D});
        const at::Tensor v_h = v.select(1, h).permute({1, 0, 2}).reshape({T, B * D});
        const at::Tensor grad_probs = at::mm(grad_out_h, v_h.t()).contiguous();
        const at::Tensor delta_h = delta.select(1, h).sum(0).contiguous();
        accumulate_logit_grad<scalar_t>(grad_logits_h, probs, grad_probs, delta_h);
      } else {
        for (int64_t b = 0; b < B; ++b) {
          const at::Tensor probs = probabilities<scalar_t>(logits, lse, padding_data(mask), b, h);
          grad_v[b][h].copy_(at::mm(probs.t(), grad_out[b][h]));
          const at::Tensor grad_probs = at::mm(grad_out[b][h], v[b][h].t()).contiguous();
          accumulate_logit_grad<scalar_t>(grad_logits_h, probs, grad_probs, delta[b][h].contiguous());
        }
      }
    }
  });
  return {grad_logits, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("fixed_attention_forward", &fixed_attention_forward_cpu);
  m.impl("fixed_attention_backward", &fixed_attention_backward_cpu);
}

}  // namespace fastattn
