// sparse_attention on the CPU: one query row at a time over its list of keys, with the
// softmax rules of softmax_math.h.
//
// The backward makes one pass over the query rows of each (batch, head) and adds every
// slot's terms to dK and dV of that (batch, head) as it goes. One task owns all rows of a
// (batch, head), or a fixed share of them with its own dK and dV summed afterwards in
// share order, so every sum runs in an order set by the shapes alone: deterministic, with
// no transposed key lists and no per-slot buffers.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"
#include "fastattn/sparse_attention_host.h"
#include "instruction_sets.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 16;
// The backward splits the query rows of a (batch, head) into shares when there are fewer
// (batch, head) pairs than this, so small batches still fill the cores; a constant, not the
// thread count, so the result does not depend on the machine.
constexpr int64_t kMinBackwardTasks = 16;

using cpu::parallel_blocks;

// 32 bytes of scalar_t as one GCC vector: an AVX register in the AVX2 copy, two SSE
// registers in the baseline one. Written as vectors because GCC left the scalar form of
// the dot product below (sixteen partial sums, then halving steps) mostly scalar.
template <class scalar_t>
struct Vector32;
template <>
struct Vector32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vector32<double> {
  typedef double type __attribute__((vector_size(32)));
};

// Two vectors of partial sums, so independent FMA chains run side by side, folded by
// halving steps at the end.
template <class scalar_t>
[[gnu::always_inline]] inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  using Vec = typename Vector32<scalar_t>::type;
  constexpr int kWidth = sizeof(Vec) / sizeof(scalar_t);
  // Products of kWidth elements from d, added to `sum`; by reference, since returning a
  // vector type from a function changes the ABI between the copies.
  const auto add_products = [a, b](Vec& sum, int64_t d) FASTATTN_INLINE_BLOCK {
    Vec x, y;
    std::memcpy(&x, a + d, sizeof(Vec));
    std::memcpy(&y, b + d, sizeof(Vec));
    sum += x * y;
  };
  Vec first = {}, second = {};
  int64_t d = 0;
  for (; d + 2 * kWidth <= n; d += 2 * kWidth) {
    add_products(first, d);
    add_products(second, d + kWidth);
  }
  for (; d + kWidth <= n; d += kWidth) add_products(first, d);
  first += second;
  scalar_t lanes[kWidth];
  std::memcpy(lanes, &first, sizeof(Vec));
#pragma GCC unroll 4
  for (int width = kWidth / 2; width > 0; width /= 2) {
#pragma GCC unroll 4
    for (int u = 0; u < width; ++u) lanes[u] += lanes[u + width];
  }
  for (; d < n; ++d) lanes[0] += a[d] * b[d];
  return lanes[0];
}

// A row of kDim sums (kDim a multiple of the vector width) held in vector registers: as a
// plain local array GCC split it into kDim scalar registers and scalar FMAs.
template <class scalar_t, int kDim>
struct RowSum {
  using Vec = typename Vector32<scalar_t>::type;
  static constexpr int kWidth = sizeof(Vec) / sizeof(scalar_t);
  Vec parts[kDim / kWidth] = {};

  [[gnu::always_inline]] void add_scaled(scalar_t alpha, const scalar_t* x) {
    for (int c = 0; c < kDim / kWidth; ++c) {
      Vec row;
      std::memcpy(&row, x + c * kWidth, sizeof(Vec));
      parts[c] += alpha * row;
    }
  }
  [[gnu::always_inline]] void store(scalar_t* dst) const { std::memcpy(dst, parts, sizeof(parts)); }
};

// Whether a row of kDim sums goes in registers (RowSum): a short row fixed at compile time
// is summed there, not through memory (a store and a reload per slot); a longer one would
// not fit.
template <class scalar_t, int kDim>
constexpr bool kInRegisters = kDim > 0 && kDim * sizeof(scalar_t) <= 128;

template <class scalar_t>
[[gnu::always_inline]] inline void add_scaled(scalar_t* __restrict__ y, scalar_t alpha, const scalar_t* __restrict__ x,
                                              int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// Each row of indices with its listed keys moved to the front, in slot order, and their
// number: the loops then run over the listed keys only. Rows of a mask differ in length
// (local_global's global row lists every key, the others a few dozen), so most slots of a
// (T, L) list can be empty, and stepping over them cost more than the listed ones.
// Skipping empty slots changes no sum: the order of the listed ones is kept.
struct ListedKeys {
  at::Tensor keys;    // int64, shaped like indices; -1 after the listed keys of each row
  at::Tensor counts;  // int64 (index_batch, index_heads, Tq)
};

ListedKeys listed_keys(const at::Tensor& indices_in) {
  const at::Tensor indices = indices_in.to(at::kLong).contiguous();
  const int64_t L = indices.size(3), rows = indices.size(0) * indices.size(1) * indices.size(2);
  at::Tensor keys = at::empty_like(indices);
  at::Tensor counts = at::empty({indices.size(0), indices.size(1), indices.size(2)}, indices.options());
  const int64_t* in = indices.data_ptr<int64_t>();
  int64_t* out = keys.data_ptr<int64_t>();
  int64_t* count = counts.data_ptr<int64_t>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t listed = 0;
      for (int64_t l = 0; l < L; ++l) {
        if (in[row * L + l] >= 0) out[row * L + listed++] = in[row * L + l];
      }
      std::fill(out + row * L + listed, out + (row + 1) * L, int64_t(-1));
      count[row] = listed;
    }
  });
  return {keys, counts};
}

// Shapes and raw pointers of one call, all contiguous. kDim > 0 fixes D at compile time
// (the common head sizes, see with_head_dim), so the row loops unroll fully.
template <class scalar_t, int kDim>
struct Problem {
  int64_t B, H, Tq, Tk, D, L, index_batch, index_heads;
  scalar_t scale;
  const scalar_t *q, *k, *v;
  const int64_t *keys, *counts;

  Problem(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const ListedKeys& listed, double s)
      : B(q_.size(0)), H(q_.size(1)), Tq(q_.size(2)), Tk(k_.size(2)), D(q_.size(3)), L(listed.keys.size(3)),
        index_batch(listed.keys.size(0)), index_heads(listed.keys.size(1)), scale(static_cast<scalar_t>(s)),
        q(q_.data_ptr<scalar_t>()), k(k_.data_ptr<scalar_t>()), v(v_.data_ptr<scalar_t>()),
        keys(listed.keys.data_ptr<int64_t>()), counts(listed.counts.data_ptr<int64_t>()) {}

  int64_t dim() const { return kDim > 0 ? kDim : D; }

  // The index set of (b, h) after broadcasting.
  int64_t index_set(int64_t b, int64_t h) const {
    return (index_batch == 1 ? 0 : b) * index_heads + (index_heads == 1 ? 0 : h);
  }
  int64_t list_row(int64_t row) const {  // row = (b H + h) Tq + i
    const int64_t bh = row / Tq;
    return index_set(bh / H, bh % H) * Tq + row % Tq;
  }
  // The keys row lists, the first `listed(row)` of them valid.
  const int64_t* slots(int64_t row) const { return keys + list_row(row) * L; }
  int64_t listed(int64_t row) const { return counts[list_row(row)]; }
  const scalar_t* key(int64_t bh, int64_t j) const { return k + (bh * Tk + j) * dim(); }
  const scalar_t* value(int64_t bh, int64_t j) const { return v + (bh * Tk + j) * dim(); }
};

// Random key lists miss the caches on every row; asking for a row a few slots ahead
// overlaps those misses with the arithmetic on the current one.
constexpr int64_t kPrefetchDistance = 4;

// Asks for row slots[l] of `rows`, one (batch, head)'s (Tk, D) matrix; kWrite when the
// row will be updated in place.
template <bool kWrite = false, class scalar_t, int kDim>
[[gnu::always_inline]] inline void prefetch_row(const Problem<scalar_t, kDim>& p, const int64_t* slots, int64_t l,
                                                const scalar_t* rows) {
  if (l >= p.L || slots[l] < 0) return;  // past the row's listed keys
  const char* row = reinterpret_cast<const char*>(rows + slots[l] * p.dim());
  for (int64_t byte = 0; byte < p.dim() * static_cast<int64_t>(sizeof(scalar_t)); byte += 64) {
    __builtin_prefetch(row + byte, kWrite);
  }
}

// scores[l] = scale q_i . k_j of every listed key; returns the largest (-inf for none).
template <class scalar_t, int kDim>
[[gnu::always_inline]] inline scalar_t row_scores(const Problem<scalar_t, kDim>& p, int64_t row, scalar_t* scores) {
  const int64_t bh = row / p.Tq;
  const int64_t* slots = p.slots(row);
  const scalar_t* query = p.q + row * p.dim();
  scalar_t row_max = -math::infinity<scalar_t>();
  for (int64_t l = 0, listed = p.listed(row); l < listed; ++l) {
    prefetch_row(p, slots, l + kPrefetchDistance, p.key(bh, 0));
    scores[l] = p.scale * dot(query, p.key(bh, slots[l]), p.dim());
    row_max = math::max_(row_max, scores[l]);
  }
  return row_max;
}

// f(std::integral_constant<int, kDim>) with kDim = D for the head sizes worth a copy of
// the kernels of their own, 0 (D at run time) for the rest.
template <class F>
void with_head_dim(int64_t D, const F& f) {
  switch (D) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

void check_cpu_dtype(const at::Tensor& q) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                   "sparse_attention on the CPU takes float32 or float64, got ", q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                const at::Tensor& v_in, const at::Tensor& indices_in,
                                                                double scale) {
  sparse_host::check_inputs(q_in, k_in, v_in, indices_in);
  sparse_host::check_index_values(indices_in, k_in.size(2));
  check_cpu_dtype(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const ListedKeys listed = listed_keys(indices_in);
  at::Tensor out = new_output(q.sizes(), q.options());
  at::Tensor lse = new_output({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_forward_cpu", [&] {
    with_head_dim(q.size(3), [&](auto dim) {
      constexpr int kDim = decltype(dim)::value;
      const Problem<scalar_t, kDim> p(q, k, v, listed, scale);
      scalar_t* out_data = out.data_ptr<scalar_t>();
      scalar_t* lse_data = lse.data_ptr<scalar_t>();
      parallel_blocks(p.B * p.H * p.Tq, kRowsPerTask, [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
        std::vector<scalar_t> scores(p.L);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t bh = row / p.Tq;
          const int64_t* slots = p.slots(row);
          const int64_t listed = p.listed(row);
          const scalar_t row_max = row_scores(p, row, scores.data());
          scalar_t sum = 0;
          for (int64_t l = 0; l < listed; ++l) {  // scores become their shifted_exp terms
            sum += scores[l] = math::shifted_exp(scores[l], row_max);
          }
          RowSum<scalar_t, kInRegisters<scalar_t, kDim> ? kDim : 0> row_sum;
          scalar_t* dst = out_data + row * p.dim();
          if (!kInRegisters<scalar_t, kDim>) std::fill(dst, dst + p.dim(), scalar_t(0));
          for (int64_t l = 0; l < listed; ++l) {
            prefetch_row(p, slots, l + kPrefetchDistance, p.value(bh, 0));
            const scalar_t prob = math::softmax_prob_from_terms(scores[l], sum);
            if constexpr (kInRegisters<scalar_t, kDim>) {
              row_sum.add_scaled(prob, p.value(bh, slots[l]));
            } else {
              add_scaled(dst, prob, p.value(bh, slots[l]), p.dim());
            }
          }
          if constexpr (kInRegisters<scalar_t, kDim>) row_sum.store(dst);
          lse_data[row] = math::softmax_lse(row_max, sum);
        }
      });
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& indices_in, double scale, const at::Tensor& out_in, const at::Tensor& lse_in) {
  sparse_host::check_inputs(q_in, k_in, v_in, indices_in);
  sparse_host::check_index_values(indices_in, k_in.size(2));
  sparse_host::check_backward_inputs(grad_out_in, q_in, out_in, lse_in);
  check_cpu_dtype(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const ListedKeys listed = listed_keys(indices_in);
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  const int64_t pairs = q.size(0) * q.size(1), queries = q.size(2);
  const int64_t shares = std::max<int64_t>(1, std::min((kMinBackwardTasks + pairs - 1) / std::max<int64_t>(pairs, 1),
                                                       queries));
  const int64_t rows_per_share = (queries + shares - 1) / shares;
  at::Tensor grad_q = new_output(q.sizes(), q.options());
  // Share 0 accumulates straight into dK and dV, share s > 0 into extra_grad_*[s - 1].
  at::Tensor grad_k = at::zeros(k.sizes(), k.options()), grad_v = at::zeros(v.sizes(), v.options());
  at::Tensor extra_grad_k = at::zeros({shares - 1, k.size(0), k.size(1), k.size(2), k.size(3)}, k.options());
  at::Tensor extra_grad_v = at::zeros_like(extra_grad_k);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_backward_cpu", [&] {
    with_head_dim(q.size(3), [&](auto dim) {
      constexpr int kDim = decltype(dim)::value;
      const Problem<scalar_t, kDim> p(q, k, v, listed, scale);
      const scalar_t* dO = grad_out.data_ptr<scalar_t>();
      const scalar_t* out_data = out.data_ptr<scalar_t>();
      const scalar_t* lse_data = lse.data_ptr<scalar_t>();
      scalar_t* dq = grad_q.data_ptr<scalar_t>();
      const auto share_rows = [&](const at::Tensor& first, const at::Tensor& extra, int64_t share, int64_t bh) {
        scalar_t* base =
            share == 0 ? first.data_ptr<scalar_t>() : extra.data_ptr<scalar_t>() + (share - 1) * first.numel();
        return base + bh * p.Tk * p.dim();
      };
      parallel_blocks(pairs * shares, 1, [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
        std::vector<scalar_t> scores(p.L);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t share = task / pairs, bh = task % pairs;
          scalar_t* dk = share_rows(grad_k, extra_grad_k, share, bh);
          scalar_t* dv = share_rows(grad_v, extra_grad_v, share, bh);
          const int64_t first = bh * p.Tq + share * rows_per_share;
          const int64_t last = bh * p.Tq + std::min(p.Tq, (share + 1) * rows_per_share);
          for (int64_t row = first; row < last; ++row) {
            const int64_t* slots = p.slots(row);
            const scalar_t* query = p.q + row * p.dim();
            const scalar_t* grad_row = dO + row * p.dim();
            const scalar_t delta = dot(grad_row, out_data + row * p.dim(), p.dim());  // dO_i . out_i
            row_scores(p, row, scores.data());  // the scores again; the saved lse normalises them
            scalar_t* dq_row = dq + row * p.dim();
            RowSum<scalar_t, kInRegisters<scalar_t, kDim> ? kDim : 0> dq_sum;  // as in the forward
            if (!kInRegisters<scalar_t, kDim>) std::fill(dq_row, dq_row + p.dim(), scalar_t(0));
            for (int64_t l = 0, listed = p.listed(row); l < listed; ++l) {
              prefetch_row(p, slots, l + kPrefetchDistance, p.value(bh, 0));
              prefetch_row<true>(p, slots, l + kPrefetchDistance, dk);
              prefetch_row<true>(p, slots, l + kPrefetchDistance, dv);
              const int64_t j = slots[l];
              const scalar_t prob = math::softmax_prob(scores[l], lse_data[row]);
              const scalar_t grad_prob = dot(grad_row, p.value(bh, j), p.dim());
              const scalar_t grad_score = p.scale * math::softmax_logit_grad(prob, grad_prob, delta);
              if constexpr (kInRegisters<scalar_t, kDim>) {
                dq_sum.add_scaled(grad_score, p.key(bh, j));
              } else {
                add_scaled(dq_row, grad_score, p.key(bh, j), p.dim());
              }
              add_scaled(dk + j * p.dim(), grad_score, query, p.dim());
              add_scaled(dv + j * p.dim(), prob, grad_row, p.dim());
            }
            if constexpr (kInRegisters<scalar_t, kDim>) dq_sum.store(dq_row);
          }
        }
      });
    });
  });
  // The shares in share order; a sum over dim 0 might run in any order.
  for (int64_t share = 1; share < shares; ++share) {
    grad_k.add_(extra_grad_k[share - 1]);
    grad_v.add_(extra_grad_v[share - 1]);
  }
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("sparse_attention_forward", &sparse_attention_forward_cpu);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cpu);
}

}  // namespace fastattn
