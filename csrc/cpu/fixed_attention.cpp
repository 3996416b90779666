// fixed_attention on the CPU: the masked softmax by the rules of softmax_math.h, with
// ATen's vectorised exp and its matrix products doing the bulk work.
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

// The logits of head h as batch item s sees them: -inf on its padded keys.
at::Tensor masked_scores(const at::Tensor& logits, const std::optional<at::Tensor>& mask, int64_t s, int64_t h) {
  if (!mask) return logits[h];
  return logits[h].masked_fill((*mask)[s].unsqueeze(0), -std::numeric_limits<double>::infinity());
}

// lse of every row of one (T, T) score matrix, by the two passes of softmax_math.h. The
// exponentials run through ATen's vectorised exp; the per-row rule comes from the header.
template <class scalar_t>
void row_logsumexp(const at::Tensor& scores, at::Tensor lse_rows) {
  const at::Tensor row_max = std::get<0>(scores.max(1, /*keepdim=*/true));
  const at::Tensor finite_max = row_max.masked_fill(row_max.isneginf(), 0);  // rows with no key
  const at::Tensor sums = (scores - finite_max).exp_().sum(1);
  const scalar_t* max_data = row_max.data_ptr<scalar_t>();
  const scalar_t* sum_data = sums.data_ptr<scalar_t>();
  scalar_t* lse = lse_rows.data_ptr<scalar_t>();
  for (int64_t i = 0; i < scores.size(0); ++i) lse[i] = math::softmax_lse(max_data[i], sum_data[i]);
}

// P = exp(scores - lse) (softmax_prob): zero on padded keys (-inf scores) and on rows
// with no key (lse = +inf).
at::Tensor probabilities(const at::Tensor& scores, const at::Tensor& lse_rows) {
  return (scores - lse_rows.unsqueeze(1)).exp_();
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
  const auto& mask = key_padding_mask;
  at::Tensor out = new_output({B, H, T, D}, v.options());
  at::Tensor lse = new_output({s_count, H, T}, logits.options());
  if (T == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_forward_cpu", [&] {
    // One task per (softmax set, head); ATen runs the work inside a task on one thread.
    at::parallel_for(0, s_count * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t s = task / H, h = task % H;
        const at::Tensor scores = masked_scores(logits, mask, s, h);
        row_logsumexp<scalar_t>(scores, lse[s][h]);
        const at::Tensor probs = probabilities(scores, lse[s][h]);
        if (s_count == 1) {
          out.select(1, h).copy_(at::matmul(probs, v.select(1, h)));
        } else {
          out[s][h].copy_(at::mm(probs, v[s][h]));
        }
      }
    });
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
  const auto& mask = key_padding_mask;
  at::Tensor grad_logits = new_output({H, T, T}, logits.options());
  at::Tensor grad_v = new_output({B, H, T, D}, v.options());
  // delta[b, h, i] = sum_j P_ij dL/dP_ij = dO_i . out_i
  const at::Tensor delta = (grad_out * out).sum(-1);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_backward_cpu", [&] {
    // One task per head: a head's logits gradient sums the batch in order, in one task.
    at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        at::Tensor grad_logits_h = grad_logits[h].zero_();
        if (s_count == 1) {
          const at::Tensor probs = probabilities(logits[h], lse[0][h]);
          grad_v.select(1, h).copy_(at::matmul(probs.t(), grad_out.select(1, h)));
          // sum_b dO_b V_b^T as one product: the batch joins the inner dimension.
          const at::Tensor grad_out_h = grad_out.select(1, h).permute({1, 0, 2}).reshape({T, B * D});
          const at::Tensor v_h = v.select(1, h).permute({1, 0, 2}).reshape({T, B * D});
          const at::Tensor grad_probs = at::mm(grad_out_h, v_h.t()).contiguous();
          const at::Tensor delta_h = delta.select(1, h).sum(0).contiguous();
          accumulate_logit_grad<scalar_t>(grad_logits_h, probs, grad_probs, delta_h);
        } else {
          for (int64_t b = 0; b < B; ++b) {
            const at::Tensor probs = probabilities(masked_scores(logits, mask, b, h), lse[b][h]);
            grad_v[b][h].copy_(at::mm(probs.t(), grad_out[b][h]));
            const at::Tensor grad_probs = at::mm(grad_out[b][h], v[b][h].t()).contiguous();
            accumulate_logit_grad<scalar_t>(grad_logits_h, probs, grad_probs, delta[b][h].contiguous());
          }
        }
      }
    });
  });
  return {grad_logits, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("fixed_attention_forward", &fixed_attention_forward_cpu);
  m.impl("fixed_attention_backward", &fixed_attention_backward_cpu);
}

}  // namespace fastattn
