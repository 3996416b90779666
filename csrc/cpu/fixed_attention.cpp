// fixed_attention on the CPU: the masked softmax by the rules of softmax_math.h, its
// element passes in softmax_rows.h (one pass per row of logits, both cores busy) and
// ATen's matrix products doing the bulk work.
//
// The exponentials E = exp(logits - m), m the row maximum over all keys, are computed once
// per head and shared by the whole batch. Without a key padding mask the forward is one
// product (E @ V[:, h]) / s, s the row sums of E, and the gradient of the logits, summed
// over the batch, is P * (dO V^T - delta) with the batch folded into the inner dimension of
// a single product.
//
// With a mask the exponentials are still shared (SPEC section 5): item b, with keep_b = 1
// on its valid keys, gets
//   out_b = (E @ (keep_b V_b)) / s_b,   s_b = E @ keep_b   (its softmax normaliser),
// so the whole batch is one product E @ [keep_1 V_1 | keep_1 | ... | keep_B V_B | keep_B]
// per head, as unpadded. The backward folds the batch the same way (see
// masked_backward_group). A row whose valid keys carry almost no mass against m (s_b
// below safe_mass(), or no valid key at all) would lose precision to underflow there: such
// rows are redone exactly, one by one.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastattn/fixed_attention.h"
#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"
#include "instruction_sets.h"
#include "softmax_rows.h"

namespace fastattn {
namespace {

// Work is split into tasks of several heads, each holding a few (heads, T, T) temporaries:
// enough heads that short sequences are not drowned in per-call overhead, few enough that
// long ones stay within this much memory per temporary.
constexpr int64_t kTaskScratchBytes = 32 << 20;

// Rows per parallel task of the row loops: enough logits that a task outweighs its start.
constexpr int64_t kRowGrainElements = 1 << 14;

// Heads per task. columns: the width of the (T, columns) temporaries a head needs besides
// its (T, T) ones (the batch folded into columns on the masked path).
struct HeadGroups {
  int64_t size;
  HeadGroups(int64_t heads, int64_t length, int64_t element_bytes, int64_t columns) {
    const int64_t per_head = std::max<int64_t>(1, length * (length + columns) * element_bytes);
    size = std::clamp<int64_t>(kTaskScratchBytes / per_head, 1, std::max<int64_t>(heads, 1));
  }
};

// body(x, row) for every row of logits' heads [h0, h0 + n), in parallel: x points at the
// row's T logits (copied to unit stride first if the keys are not), row counts the rows of
// the group from 0.
template <class scalar_t, class Body>
void for_each_logit_row(const at::Tensor& logits, int64_t h0, int64_t n, const Body& body) {
  const at::Tensor scores = logits.stride(2) == 1 ? logits.narrow(0, h0, n) : logits.narrow(0, h0, n).contiguous();
  const int64_t T = scores.size(2), head_stride = scores.stride(0), row_stride = scores.stride(1);
  const scalar_t* data = scores.data_ptr<scalar_t>();
  cpu::parallel_blocks(n * T, std::max<int64_t>(1, kRowGrainElements / T),
                       [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
                         for (int64_t row = begin; row < end; ++row) {
                           body(data + (row / T) * head_stride + (row % T) * row_stride, row);
                         }
                       });
}

// (heads per group, T, T): the exponentials of one head group at a time, reused by the
// next group, so that their pages are touched once per call rather than once per group.
at::Tensor group_scratch(const HeadGroups& groups, const at::Tensor& logits) {
  return at::empty({groups.size, logits.size(1), logits.size(2)}, logits.options());
}

// P = exp(scores - lse) (softmax_prob) of heads [h0, h0 + n) into `scratch`: zero on
// padded keys (-inf scores) and on rows with no key (lse = +inf).
template <class scalar_t>
at::Tensor probabilities(const at::Tensor& logits, const at::Tensor& lse, int64_t h0, int64_t n,
                         const at::Tensor& scratch) {
  const int64_t T = logits.size(2);
  at::Tensor probs = scratch.narrow(0, 0, n);
  scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* shift = lse.narrow(0, h0, n).contiguous().data_ptr<scalar_t>();
  for_each_logit_row<scalar_t>(logits, h0, n, [&](const scalar_t* x, int64_t row) FASTATTN_INLINE_BLOCK {
    cpu::exp_shifted(x, T, shift[row], p + row * T);
  });
  return probs;
}

// grad[i, j] = P_ij * (grad[i, j] - delta_i) in place (softmax_logit_grad), grad holding
// dL/dP on entry; all (n, T, T) and contiguous, delta (n, T).
template <class scalar_t>
void logit_grad_in_place(at::Tensor& grad, const at::Tensor& probs, const at::Tensor& delta) {
  const int64_t T = probs.size(-1);
  scalar_t* g = grad.data_ptr<scalar_t>();
  const scalar_t* p = probs.data_ptr<scalar_t>();
  const scalar_t* d = delta.data_ptr<scalar_t>();
  cpu::parallel_blocks(delta.numel(), std::max<int64_t>(1, kRowGrainElements / T),
                       [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
                         for (int64_t row = begin; row < end; ++row) {
                           for (int64_t j = row * T; j < (row + 1) * T; ++j) {
                             g[j] = math::softmax_logit_grad(p[j], g[j], d[row]);
                           }
                         }
                       });
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

// Below this normaliser s_b a row leaves the shared path: every term of a larger sum that
// is not a normal number weighs less than one ulp of it, so the shared row is exact to
// rounding; a smaller sum may hide terms lost to underflow.
template <class scalar_t>
scalar_t safe_mass() {
  return std::ldexp(std::numeric_limits<scalar_t>::min(), std::numeric_limits<scalar_t>::digits);
}

// exp(logits - row max over all keys) of heads [h0, h0 + n) in `scratch`, shared by every
// item of the batch whatever its padding, in one pass over the logits; the row maxima
// (n, T, 1) are finite (0 for a row of -inf), row_sums (n, T, 1) the sums of the exps.
struct SharedExponentials {
  at::Tensor exps, row_max, row_sums;
};

template <class scalar_t>
SharedExponentials shared_exponentials(const at::Tensor& logits, int64_t h0, int64_t n, const at::Tensor& scratch) {
  const int64_t T = logits.size(2);
  SharedExponentials shared{scratch.narrow(0, 0, n), at::empty({n, T, 1}, logits.options()),
                            at::empty({n, T, 1}, logits.options())};
  scalar_t* exps = shared.exps.data_ptr<scalar_t>();
  scalar_t* maxima = shared.row_max.data_ptr<scalar_t>();
  scalar_t* sums = shared.row_sums.data_ptr<scalar_t>();
  for_each_logit_row<scalar_t>(logits, h0, n, [&](const scalar_t* x, int64_t row) FASTATTN_INLINE_BLOCK {
    const scalar_t largest = cpu::row_maximum(x, T);
    maxima[row] = largest == -math::infinity<scalar_t>() ? scalar_t(0) : largest;
    sums[row] = cpu::exp_shifted(x, T, maxima[row], exps + row * T);
  });
  return shared;
}

// [x_b * scale_b | last_b] of every item b as (n, T, B * (D + 1)), for x (B, n, T, D) and
// scale, last broadcast to (B, n, T, 1): the columns of one product per head, with the
// batch folded in.
at::Tensor item_columns(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& last) {
  const int64_t B = x.size(0), n = x.size(1), T = x.size(2), D = x.size(3);
  return at::cat({x * scale, last.expand({B, n, T, 1})}, -1).permute({1, 2, 0, 3}).reshape({n, T, B * (D + 1)});
}

// Item b's scores of row (h, i) over its valid keys, for the rows that leave the shared
// path: the masked softmax of softmax_math.h, one row at a time. Calls visit(j, p_j) for
// every valid key and returns the row's lse.
template <class scalar_t, class Visit>
scalar_t exact_row(const at::TensorAccessor<scalar_t, 3>& logits, const at::TensorAccessor<bool, 2>& mask, int64_t b,
                   int64_t h, int64_t i, const Visit& visit) {
  const int64_t T = mask.size(1);
  scalar_t row_max = -math::infinity<scalar_t>();
  for (int64_t j = 0; j < T; ++j) {
    if (!mask[b][j]) row_max = math::max_(row_max, logits[h][i][j]);
  }
  scalar_t sum = 0;
  for (int64_t j = 0; j < T; ++j) {
    if (!mask[b][j]) sum += math::shifted_exp(logits[h][i][j], row_max);
  }
  const scalar_t lse = math::softmax_lse(row_max, sum);
  for (int64_t j = 0; j < T; ++j) {
    if (!mask[b][j]) visit(j, math::softmax_prob(logits[h][i][j], lse));
  }
  return lse;
}

// The forward of heads [h0, h0 + n) with a mask: out and lse (B, H, T) of every item
// from one product with the shared exponentials.
template <class scalar_t>
void masked_forward_group(const at::Tensor& logits, const at::Tensor& v, const at::Tensor& mask,
                          const at::Tensor& keep, at::Tensor& out, at::Tensor& lse, int64_t h0, int64_t n,
                          const at::Tensor& scratch) {
  const int64_t B = v.size(0), T = v.size(2), D = v.size(3);
  const SharedExponentials shared = shared_exponentials<scalar_t>(logits, h0, n, scratch);
  // (n, T, B, D + 1): item b's unnormalised output, then its normaliser s_b
  const at::Tensor sums_and_outputs =
      at::bmm(shared.exps, item_columns(v.narrow(1, h0, n), keep, keep)).view({n, T, B, D + 1});
  const at::Tensor sums = sums_and_outputs.select(-1, D);
  out.narrow(1, h0, n).copy_((sums_and_outputs.narrow(-1, 0, D) / sums.unsqueeze(-1)).permute({2, 0, 1, 3}));
  lse.narrow(1, h0, n).copy_((shared.row_max + sums.log()).permute({2, 0, 1}));
  const at::Tensor unsafe = (sums < safe_mass<scalar_t>()).nonzero();  // (rows, 3): head, i, b
  if (unsafe.size(0) == 0) return;
  const auto logit = logits.accessor<scalar_t, 3>();
  const auto padding = mask.accessor<bool, 2>();
  const auto values = v.accessor<scalar_t, 4>();
  auto outputs = out.accessor<scalar_t, 4>();
  auto lses = lse.accessor<scalar_t, 3>();
  const auto rows = unsafe.accessor<int64_t, 2>();
  for (int64_t r = 0; r < unsafe.size(0); ++r) {
    const int64_t h = h0 + rows[r][0], i = rows[r][1], b = rows[r][2];
    auto row = outputs[b][h][i];
    for (int64_t d = 0; d < D; ++d) row[d] = 0;
    lses[b][h][i] = exact_row(logit, padding, b, h, i, [&](int64_t j, scalar_t p) {
      for (int64_t d = 0; d < D; ++d) row[d] += p * values[b][h][j][d];
    });
  }
}

// The backward of heads [h0, h0 + n) with a mask. With r_b = 1 / s_b, P_b = r_b E keep_b^T,
// so
//   dV_b     = keep_b * (E^T @ (r_b dO_b)),
//   dlogits  = E * sum_b (r_b dO_b) (keep_b V_b)^T - (r_b delta_b) keep_b^T
//            = E * ([r_1 dO_1 | -r_1 delta_1 | ...] @ [keep_1 V_1 | keep_1 | ...]^T):
// the batch is the inner dimension of one product. s_b is recomputed (E @ keep_b, a small
// product) rather than taken from lse: lse = m + log s_b rounds to the ulp of m, which is
// coarse for large logits. Rows that left the shared path in the forward get r_b = 0 here
// and their exact terms added one by one.
template <class scalar_t>
void masked_backward_group(const at::Tensor& grad_out, const at::Tensor& logits, const at::Tensor& v,
                           const at::Tensor& mask, const at::Tensor& keep, const at::Tensor& delta,
                           at::Tensor& grad_logits, at::Tensor& grad_v, int64_t h0, int64_t n,
                           const at::Tensor& scratch) {
  const int64_t B = v.size(0), T = v.size(2), D = v.size(3);
  const SharedExponentials shared = shared_exponentials<scalar_t>(logits, h0, n, scratch);
  const at::Tensor sums = at::bmm(shared.exps, keep.view({B, T}).t().expand({n, T, B})).permute({2, 0, 1});
  const at::Tensor unsafe = sums < safe_mass<scalar_t>();  // (B, n, T)
  const at::Tensor inverse_mass = sums.reciprocal().masked_fill_(unsafe, 0).unsqueeze(-1);  // r_b, (B, n, T, 1)
  // (n, T, B (D + 1)): [r_b dO_b | -r_b delta_b] of every item
  const at::Tensor row_side =
      item_columns(grad_out.narrow(1, h0, n), inverse_mass, -inverse_mass * delta.narrow(1, h0, n).unsqueeze(-1));
  const at::Tensor through_exps = at::bmm(shared.exps.transpose(1, 2), row_side).view({n, T, B, D + 1});
  grad_v.narrow(1, h0, n).copy_(through_exps.narrow(-1, 0, D).permute({2, 0, 1, 3}) * keep);
  const at::Tensor value_side = item_columns(v.narrow(1, h0, n), keep, keep);  // [keep_b V_b | keep_b]
  at::Tensor grad_logits_group = grad_logits.narrow(0, h0, n);
  at::bmm_out(grad_logits_group, row_side, value_side.transpose(1, 2)).mul_(shared.exps);
  const at::Tensor unsafe_rows = unsafe.nonzero();  // (rows, 3): b, head, i
  if (unsafe_rows.size(0) == 0) return;
  const auto logit = logits.accessor<scalar_t, 3>();
  const auto padding = mask.accessor<bool, 2>();
  const auto values = v.accessor<scalar_t, 4>();
  const auto grads_out = grad_out.accessor<scalar_t, 4>();
  const auto deltas = delta.accessor<scalar_t, 3>();
  auto grad_logit = grad_logits.accessor<scalar_t, 3>();
  auto grad_value = grad_v.accessor<scalar_t, 4>();
  const auto rows = unsafe_rows.accessor<int64_t, 2>();
  for (int64_t r = 0; r < unsafe_rows.size(0); ++r) {
    const int64_t b = rows[r][0], h = h0 + rows[r][1], i = rows[r][2];
    exact_row(logit, padding, b, h, i, [&](int64_t j, scalar_t p) {
      scalar_t grad_prob = 0;
      for (int64_t d = 0; d < D; ++d) {
        grad_prob += grads_out[b][h][i][d] * values[b][h][j][d];
        grad_value[b][h][j][d] += p * grads_out[b][h][i][d];
      }
      grad_logit[h][i][j] += math::softmax_logit_grad(p, grad_prob, deltas[b][h][i]);
    });
  }
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
  const HeadGroups groups(H, T, logits.element_size(), mask ? B * (D + 1) : 0);
  const at::Tensor scratch = group_scratch(groups, logits);
  const at::Tensor keep = mask ? mask->logical_not().to(v.scalar_type()).view({B, 1, T, 1}) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_forward_cpu", [&] {
    // One task per head group, in turn: each is a few large ATen products that use every
    // thread themselves (inside at::parallel_for they would run on one, and without the
    // caller's dispatch state).
    for (int64_t h0 = 0; h0 < H; h0 += groups.size) {
      const int64_t n = std::min(groups.size, H - h0);
      if (mask) {
        masked_forward_group<scalar_t>(logits, v, *mask, keep, out, lse, h0, n, scratch);
        continue;
      }
      // One pass of exponentials, normalised after the product: out = (E @ V) / s. The
      // row's own maximum gives s >= 1, except in a row of -inf logits (s = 0: zeros).
      const SharedExponentials shared = shared_exponentials<scalar_t>(logits, h0, n, scratch);
      const at::Tensor& sums = shared.row_sums;
      const at::Tensor inverse = sums.reciprocal().masked_fill_(sums == 0, 0);
      const at::Tensor products = at::bmm(shared.exps, batch_as_columns(v, h0, n)) * inverse;
      out.narrow(1, h0, n).copy_(columns_as_batch(products, B, D));
      lse[0].narrow(0, h0, n).copy_((shared.row_max + sums.log()).masked_fill_(sums == 0, std::numeric_limits<double>::infinity()).squeeze(-1));
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
  const HeadGroups groups(H, T, logits.element_size(), mask ? 2 * B * (D + 1) : 0);
  const at::Tensor scratch = group_scratch(groups, logits);
  const at::Tensor keep = mask ? mask->logical_not().to(v.scalar_type()).view({B, 1, T, 1}) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "fixed_attention_backward_cpu", [&] {
    // One task per head group, in turn (as in the forward): its logits gradient sums the
    // batch in order, in one task.
    for (int64_t h0 = 0; h0 < H; h0 += groups.size) {
      const int64_t n = std::min(groups.size, H - h0);
      // Branch on the mask, not on the number of softmax sets: with B = 1 a masked call
      // has one set too, but its probabilities must still leave out the padded keys.
      if (mask) {
        masked_backward_group<scalar_t>(grad_out, logits, v, *mask, keep, delta, grad_logits, grad_v, h0, n,
                                        scratch);
      } else {
        const at::Tensor probs = probabilities<scalar_t>(logits, lse[0], h0, n, scratch);
        const at::Tensor grad_out_columns = batch_as_columns(grad_out, h0, n);
        grad_v.narrow(1, h0, n).copy_(columns_as_batch(at::bmm(probs.transpose(1, 2), grad_out_columns), B, D));
        // sum_b dO_b V_b^T, written where the logits' gradient goes: the batch is the inner
        // dimension of one product per head.
        at::Tensor grad_logits_group = grad_logits.narrow(0, h0, n);
        at::bmm_out(grad_logits_group, grad_out_columns, batch_as_columns(v, h0, n).transpose(1, 2));
        const at::Tensor delta_group = delta.narrow(1, h0, n).sum(0).contiguous();
        logit_grad_in_place<scalar_t>(grad_logits_group, probs, delta_group);
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
