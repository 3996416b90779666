// sparse_attention on the CPU: one query row at a time over its list of keys, with the
// softmax rules of softmax_math.h. The backward reduces the key gradients over the
// transposed lists of sparse_attention_host.h, in a fixed order.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"
#include "fastattn/sparse_attention_host.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 16;

// The two inner loops of the op. Built for AVX2 with FMA as well as the baseline, the
// better picked at load time (GCC function multiversioning), since a portable wheel cannot
// assume AVX2; eight partial sums give the vectoriser independent lanes to fill.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTATTN_CPU_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define FASTATTN_CPU_CLONES
#endif

// always_inline: each clone must compile its own copy for its target.
template <class scalar_t>
[[gnu::always_inline]] inline scalar_t dot_impl(const scalar_t* a, const scalar_t* b, int64_t n) {
  scalar_t partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int u = 0; u < 8; ++u) partial[u] += a[d + u] * b[d + u];
  }
  for (; d < n; ++d) partial[0] += a[d] * b[d];
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

template <class scalar_t>
[[gnu::always_inline]] inline void add_scaled_impl(scalar_t* __restrict__ y, scalar_t alpha, const scalar_t* __restrict__ x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

FASTATTN_CPU_CLONES float dot(const float* a, const float* b, int64_t n) { return dot_impl(a, b, n); }
FASTATTN_CPU_CLONES double dot(const double* a, const double* b, int64_t n) { return dot_impl(a, b, n); }
FASTATTN_CPU_CLONES void add_scaled(float* y, float alpha, const float* x, int64_t n) { add_scaled_impl(y, alpha, x, n); }
FASTATTN_CPU_CLONES void add_scaled(double* y, double alpha, const double* x, int64_t n) {
  add_scaled_impl(y, alpha, x, n);
}

// Shapes and raw pointers of one call, all contiguous.
template <class scalar_t>
struct Problem {
  int64_t B, H, Tq, Tk, D, L, index_batch, index_heads;
  scalar_t scale;
  const scalar_t *q, *k, *v;
  const int64_t* indices;

  Problem(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& idx, double s)
      : B(q_.size(0)), H(q_.size(1)), Tq(q_.size(2)), Tk(k_.size(2)), D(q_.size(3)), L(idx.size(3)),
        index_batch(idx.size(0)), index_heads(idx.size(1)), scale(static_cast<scalar_t>(s)),
        q(q_.data_ptr<scalar_t>()), k(k_.data_ptr<scalar_t>()), v(v_.data_ptr<scalar_t>()),
        indices(idx.data_ptr<int64_t>()) {}

  // The index set of (b, h) after broadcasting.
  int64_t index_set(int64_t b, int64_t h) const {
    return (index_batch == 1 ? 0 : b) * index_heads + (index_heads == 1 ? 0 : h);
  }
  const int64_t* slots(int64_t row) const {  // row = (b H + h) Tq + i
    const int64_t bh = row / Tq;
    return indices + (index_set(bh / H, bh % H) * Tq + row % Tq) * L;
  }
  const scalar_t* key(int64_t bh, int64_t j) const { return k + (bh * Tk + j) * D; }
  const scalar_t* value(int64_t bh, int64_t j) const { return v + (bh * Tk + j) * D; }
};

// Random key lists miss the caches on every row; asking for a row a few slots ahead
// overlaps those misses with the arithmetic on the current one.
constexpr int64_t kPrefetchDistance = 4;

template <class scalar_t>
void prefetch_row(const Problem<scalar_t>& p, int64_t bh, const int64_t* slots, int64_t l, const scalar_t* base) {
  if (l >= p.L || slots[l] < 0) return;
  const char* row = reinterpret_cast<const char*>(base + (bh * p.Tk + slots[l]) * p.D);
  for (int64_t byte = 0; byte < p.D * static_cast<int64_t>(sizeof(scalar_t)); byte += 64) {
    __builtin_prefetch(row + byte);
  }
}

// scores[l] = scale q_i . k_j of every valid slot, and the row's lse.
template <class scalar_t>
scalar_t row_scores(const Problem<scalar_t>& p, int64_t row, scalar_t* scores) {
  const int64_t bh = row / p.Tq;
  const int64_t* slots = p.slots(row);
  const scalar_t* query = p.q + row * p.D;
  scalar_t row_max = -math::infinity<scalar_t>();
  for (int64_t l = 0; l < p.L; ++l) {
    prefetch_row(p, bh, slots, l + kPrefetchDistance, p.k);
    if (slots[l] < 0) continue;
    scores[l] = p.scale * dot(query, p.key(bh, slots[l]), p.D);
    row_max = math::max_(row_max, scores[l]);
  }
  scalar_t sum = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    if (slots[l] >= 0) sum += math::shifted_exp(scores[l], row_max);
  }
  return math::softmax_lse(row_max, sum);
}

// sparse_host::key_lists by a counting sort: linear in the slots, and stable because the
// slots are visited in order, so the lists are the same as the sorted ones.
sparse_host::KeyLists key_lists_by_counting(const at::Tensor& indices, int64_t keys) {
  const int64_t sets = indices.size(0) * indices.size(1), slots = indices.size(2) * indices.size(3);
  at::Tensor perm = at::empty({sets, slots}, indices.options());
  at::Tensor offsets = at::zeros({sets, keys + 1}, indices.options());
  const int64_t* index = indices.data_ptr<int64_t>();
  at::parallel_for(0, sets, 1, [&](int64_t begin, int64_t end) {
    for (int64_t set = begin; set < end; ++set) {
      const int64_t* slot_keys = index + set * slots;
      int64_t* offset = offsets.data_ptr<int64_t>() + set * (keys + 1);
      int64_t* order = perm.data_ptr<int64_t>() + set * slots;
      for (int64_t e = 0; e < slots; ++e) {
        if (slot_keys[e] >= 0) ++offset[slot_keys[e] + 1];
      }
      for (int64_t j = 0; j < keys; ++j) offset[j + 1] += offset[j];
      std::vector<int64_t> next(offset, offset + keys);
      int64_t empty = offset[keys];  // empty slots go last, as in the sorted lists
      for (int64_t e = 0; e < slots; ++e) order[slot_keys[e] >= 0 ? next[slot_keys[e]]++ : empty++] = e;
    }
  });
  return {perm, offsets};
}

at::Tensor as_long(const at::Tensor& indices) { return indices.to(at::kLong).contiguous(); }

void check_cpu_dtype(const at::Tensor& q) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
                   "sparse_attention on the CPU takes float32 or float64, got ", q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_forward_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                const at::Tensor& v_in, const at::Tensor& indices_in,
                                                                double scale) {
  sparse_host::check_inputs(q_in, k_in, v_in, indices_in);
  check_cpu_dtype(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), indices = as_long(indices_in);
  at::Tensor out = new_output(q.sizes(), q.options());
  at::Tensor lse = new_output({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_forward_cpu", [&] {
    const Problem<scalar_t> p(q, k, v, indices, scale);
    scalar_t* out_data = out.data_ptr<scalar_t>();
    scalar_t* lse_data = lse.data_ptr<scalar_t>();
    at::parallel_for(0, p.B * p.H * p.Tq, kRowsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scores(p.L);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bh = row / p.Tq;
        const int64_t* slots = p.slots(row);
        const scalar_t lse_row = row_scores(p, row, scores.data());
        scalar_t* dst = out_data + row * p.D;
        std::fill(dst, dst + p.D, scalar_t(0));
        for (int64_t l = 0; l < p.L; ++l) {
          prefetch_row(p, bh, slots, l + kPrefetchDistance, p.v);
          if (slots[l] >= 0) add_scaled(dst, math::softmax_prob(scores[l], lse_row), p.value(bh, slots[l]), p.D);
        }
        lse_data[row] = lse_row;
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& indices_in, double scale, const at::Tensor& out, const at::Tensor& lse_in) {
  sparse_host::check_inputs(q_in, k_in, v_in, indices_in);
  check_cpu_dtype(q_in);
  const at::Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), indices = as_long(indices_in);
  const at::Tensor grad_out = grad_out_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor delta = (grad_out * out).sum(-1).contiguous();  // dO_i . out_i
  at::Tensor grad_q = new_output(q.sizes(), q.options());
  at::Tensor grad_k = new_output(k.sizes(), k.options());
  at::Tensor grad_v = new_output(v.sizes(), v.options());
  // Per slot: P and dL/dscore, kept for the per-key pass (O(B H T L) memory).
  at::Tensor probs = at::zeros({q.size(0), q.size(1), q.size(2), indices.size(3)}, q.options());
  at::Tensor grad_scores = at::zeros_like(probs);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_backward_cpu", [&] {
    const Problem<scalar_t> p(q, k, v, indices, scale);
    const scalar_t* dO = grad_out.data_ptr<scalar_t>();
    const scalar_t* lse_data = lse.data_ptr<scalar_t>();
    const scalar_t* delta_data = delta.data_ptr<scalar_t>();
    scalar_t* P = probs.data_ptr<scalar_t>();
    scalar_t* dS = grad_scores.data_ptr<scalar_t>();
    scalar_t* dq = grad_q.data_ptr<scalar_t>();
    at::parallel_for(0, p.B * p.H * p.Tq, kRowsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scores(p.L);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bh = row / p.Tq;
        const int64_t* slots = p.slots(row);
        row_scores(p, row, scores.data());  // the scores again; the saved lse normalises them
        scalar_t* dq_row = dq + row * p.D;
        std::fill(dq_row, dq_row + p.D, scalar_t(0));
        for (int64_t l = 0; l < p.L; ++l) {
          if (slots[l] < 0) continue;
          const scalar_t prob = math::softmax_prob(scores[l], lse_data[row]);
          const scalar_t grad_prob = dot(dO + row * p.D, p.value(bh, slots[l]), p.D);
          const scalar_t grad_score = math::softmax_logit_grad(prob, grad_prob, delta_data[row]);
          P[row * p.L + l] = prob;
          dS[row * p.L + l] = grad_score;
          add_scaled(dq_row, p.scale * grad_score, p.key(bh, slots[l]), p.D);
        }
      }
    });
    const sparse_host::KeyLists lists = key_lists_by_counting(indices, p.Tk);
    const int64_t* perm = lists.perm.data_ptr<int64_t>();
    const int64_t* offsets = lists.offsets.data_ptr<int64_t>();
    scalar_t* dk = grad_k.data_ptr<scalar_t>();
    scalar_t* dv = grad_v.data_ptr<scalar_t>();
    at::parallel_for(0, p.B * p.H * p.Tk, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t key_row = begin; key_row < end; ++key_row) {
        const int64_t bh = key_row / p.Tk, j = key_row % p.Tk, set = p.index_set(bh / p.H, bh % p.H);
        scalar_t* dk_row = dk + key_row * p.D;
        scalar_t* dv_row = dv + key_row * p.D;
        std::fill(dk_row, dk_row + p.D, scalar_t(0));
        std::fill(dv_row, dv_row + p.D, scalar_t(0));
        const int64_t* list = perm + set * p.Tq * p.L;
        for (int64_t e = offsets[set * (p.Tk + 1) + j]; e < offsets[set * (p.Tk + 1) + j + 1]; ++e) {
          const int64_t slot = (bh * p.Tq) * p.L + list[e];  // list[e] = i L + l
          const int64_t query_row = bh * p.Tq + list[e] / p.L;
          add_scaled(dk_row, p.scale * dS[slot], p.q + query_row * p.D, p.D);
          add_scaled(dv_row, P[slot], dO + query_row * p.D, p.D);
        }
      }
    });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("sparse_attention_forward", &sparse_attention_forward_cpu);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cpu);
}

}  // namespace fastattn
