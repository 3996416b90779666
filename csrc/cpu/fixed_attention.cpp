// fixed_attention on the CPU: the masked softmax by the rules of softmax_math.h, with
// ATen's vectorised exp and its matrix products doing the bulk work.
//
// Without a key padding mask the probabilities P (T, T) of a head are built once and
// shared by the whole batch: the forward is one product P @ V[:, h], and the gradient
// of the logits, summed over the batch, is P * (dO V^T - delta) with the batch folded
// into the inner dimension of a single product. With a mask, each batch item has its
// own P, and the batch sum runs in a fixed order (deterministic).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "fastattn/fixed_attention.h"
#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"

namespace fastattn {
namespace {

// Work is split into tasks of several heads, each holding a few (heads, T, T) temporaries:
// enough heads that short sequences are not drowned in per-call overhead, few enough that
// long ones stay within this much memory per temporary.
constexpr int64_t kTaskScratchBytes = 32 << 20;

struct HeadGroups {
  int64_t size, count;
  HeadGroups(int64_t heads, int64_t length, int64_t element_bytes) {
    const int64_t per_head = std::max<int64_t>(1, length * length * element_bytes);
    size = std::clamp<int64_t>(kTaskScratchBytes / per_head, 1, std::max<int64_t>(heads, 1));
    count = (heads + size - 1) / size;
  }
};

// The logits of heads [h0, h0 + n) as batch item s sees them: -inf on its padded keys.
at::Tensor masked_scores(const at::Tensor& logits, const std::optional<at::Tensor>& mask, int64_t s, int64_t h0,
                         int64_t n) {
  const at::Tensor scores = logits.narrow(0, h0, n);
  if (!mask) return scores;
  return scores.masked_fill((*mask)[s].view({1, 1, -1}), -std::numeric_limits<double>::infinity());
}

// lse of every row of (n, T, T) scores into the contiguous (n, T) lse_rows, by the two
// passes of softmax_math.h: ATen's vectorised exp does the bulk, the header the per-row rule.
template <class scalar_t>
void row_logsumexp(const at::Tensor& scores, at::Tensor lse_rows) {
  const at::Tensor row_max = std::get<0>(scores.max(-1, /*keepdim=*/true));
  const at::Tensor finite_max = row_max.masked_fill(row_max.isneginf(), 0);  // rows with no key
  const at::Tensor sums = (scores - finite_max).exp_().sum(-1).contiguous();
  const at::Tensor maxima = row_max.contiguous();
  const scalar_t* max_data = maxima.data_ptr<scalar_t>();
  const scalar_t* sum_data = sums.data_ptr<scalar_t>();
  scalar_t* lse = lse_rows.data_ptr<scalar_t>();
  for (int64_t row = 0; row < sums.numel(); ++row) lse[row] = math::softmax_lse(max_data[row], sum_data[row]);
}

// P = exp(scores - lse) (softmax_prob): zero on padded keys (-inf scores) and on rows
// with no key (lse = +inf).
at::Tensor probabilities(const at::Tensor& scores, const at::Tensor& lse_rows) {
  return (scores - lse_rows.unsqueeze(-1)).exp_();
}

// grad_logits += P * (grad_probs - delta[..., None]), element by element; all contiguous.
template <class scalar_t>
void accumulate_logit_grad(at::Tensor grad_logits, const at::Tensor& probs, const at::Tensor& grad_probs,
                           const at::Tensor& delta) {
  const int64_t T = probs.size(-1);
  scalar_t* g = grad_logits.data_ptr<scalar_t>();
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* dp = grad_probs.data_ptr<scalar_t>();
  const scalar_t* d = delta.data_ptr<scalar_t>();
  for (int64_t row = 0; row < delta.numel(); ++row) {
    for (int64_t j = 0; j < T; ++j) {
      g[row * T + j] += math::softmax_logit_grad(p[row * T + j], dp[row * T + j], d[row]);
    }
  }
}

// Heads [h0, h0 + n) of a (B, H, T, D) tensor as (n, T, B * D): with one P per head
// shared by the batch, every product over the batch is one matrix product per head.
at::Tensor batch_as_columns(const at::Tensor& x, int64_t h0, int64_t n) {
  return x.narrow(1, h0, n).permute({1, 2, 0, 3}).reshape({n, x.size(2), x.size(0) * x.size(3)});
}

// The inverse view: (n, T, B * D) as (B, n, T, D).
at::Tensor columns_as_batch(const at::Tensor& y, int64_t batch, int64_t dim) {
  return y.view({y.size(0), y.size(1), batch, dim}).permute({2, 0, 1, 3});
}

void check_cpu_dtype(const at::Tensor& logits) {
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
                   "fixed_attention on the CPU takes float32 or float64, got ", logits.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_forward_cpu(const at::Tensor& logits, const at::Tensor& v,
                                                               const std::optional<at::Tensor>& mask) {
  check_fixed_attention_inputs(logits, v, mask);
  check_cpu_dtype(logits);
  const int64_t B = v.size(0), H = v.size(1), T = v.size(2), D = v.size(3);
  const int64_t s_count = softmax_sets(v, mask);
  at::Tensor out = new_output({B, H, T, D}, v.options());
  at::Tensor lse = new_output({s_count, H, T}, logits.options());
  if (T == 0 || H == 0) return {out, lse};
  const HeadGroups groups(H, T, logits.element_size());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_forward_cpu", [&] {
    // One task per (softmax set, head group), in turn: each is a few large ATen products
    // that use every thread themselves (inside at::parallel_for they would run on one, and
    // without the caller's dispatch state).
    for (int64_t task = 0; task < s_count * groups.count; ++task) {
      const int64_t s = task / groups.count, h0 = (task % groups.count) * groups.size;
      const int64_t n = std::min(groups.size, H - h0);
      const at::Tensor scores = masked_scores(logits, mask, s, h0, n);
      const at::Tensor lse_rows = lse[s].narrow(0, h0, n);
      row_logsumexp<scalar_t>(scores, lse_rows);
      const at::Tensor probs = probabilities(scores, lse_rows);
      if (s_count == 1) {
        out.narrow(1, h0, n).copy_(columns_as_batch(at::bmm(probs, batch_as_columns(v, h0, n)), B, D));
      } else {
        out[s].narrow(0, h0, n).copy_(at::bmm(probs, v[s].narrow(0, h0, n)));
      }
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& logits,
                                                                const at::Tensor& v,
                                                                const std::optional<at::Tensor>& mask,
                                                                const at::Tensor& out, const at::Tensor& lse) {
  check_fixed_attention_backward_inputs(grad_out, logits, v, mask, out, lse);
  check_cpu_dtype(logits);
  const int64_t B = v.size(0), H = v.size(1), T = v.size(2), D = v.size(3);
  at::Tensor grad_logits = new_output({H, T, T}, logits.options());
  at::Tensor grad_v = new_output({B, H, T, D}, v.options());
  if (T == 0 || H == 0) return {grad_logits, grad_v};
  // delta[b, h, i] = sum_j P_ij dL/dP_ij = dO_i . out_i
  const at::Tensor delta = (grad_out * out).sum(-1);
  const HeadGroups groups(H, T, logits.element_size());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_backward_cpu", [&] {
    // One task per head group, in turn (as in the forward): its logits gradient sums the
    // batch in order, in one task.
    for (int64_t task = 0; task < groups.count; ++task) {
      const int64_t h0 = task * groups.size, n = std::min(groups.size, H - h0);
      at::Tensor grad_logits_group = grad_logits.narrow(0, h0, n).zero_();
      // Branch on the mask, not on s_count: with B = 1 a masked call has one softmax set
      // too, but its probabilities must still leave out the padded keys.
      if (!mask) {
        const at::Tensor probs = probabilities(logits.narrow(0, h0, n), lse[0].narrow(0, h0, n));
        const at::Tensor grad_out_columns = batch_as_columns(grad_out, h0, n);
        grad_v.narrow(1, h0, n).copy_(columns_as_batch(at::bmm(probs.transpose(1, 2), grad_out_columns), B, D));
        // sum_b dO_b V_b^T: the batch is the inner dimension of one product per head.
        const at::Tensor grad_probs = at::bmm(grad_out_columns, batch_as_columns(v, h0, n).transpose(1, 2));
        const at::Tensor delta_group = delta.narrow(1, h0, n).sum(0).contiguous();
        accumulate_logit_grad<scalar_t>(grad_logits_group, probs, grad_probs.contiguous(), delta_group);
      } else {
        for (int64_t b = 0; b < B; ++b) {
          const at::Tensor probs = probabilities(masked_scores(logits, mask, b, h0, n), lse[b].narrow(0, h0, n));
          const at::Tensor grad_out_group = grad_out[b].narrow(0, h0, n);
          grad_v[b].narrow(0, h0, n).copy_(at::bmm(probs.transpose(1, 2), grad_out_group));
          const at::Tensor grad_probs = at::bmm(grad_out_group, v[b].narrow(0, h0, n).transpose(1, 2));
          accumulate_logit_grad<scalar_t>(grad_logits_group, probs, grad_probs.contiguous(),
                                          delta[b].narrow(0, h0, n).contiguous());
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
