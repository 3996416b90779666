// sparse_attention on the CPU: one query row at a time over its list of keys, with the
// softmax rules of softmax_math.h. A row's loops run in passes over arrays of its slots
// (the dot products eight slots at a time, the exponentials a vector at a time, then the
// weighted sum of rows), the vector pieces coming from vector_lanes.h. Forward rows that
// list the same keys as the row before them take their scores from a transposed copy of
// those keys (KeyListTile).
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
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "fastattn/outputs.h"
#include "fastattn/softmax_math.h"
#include "fastattn/sparse_attention_host.h"
#include "instruction_sets.h"
#include "softmax_rows.h"
#include "vector_lanes.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 16;
// The backward splits the query rows of a (batch, head) into shares when there are fewer
// (batch, head) pairs than this, so small batches still fill the cores; a constant, not the
// thread count, so the result does not depend on the machine.
constexpr int64_t kMinBackwardTasks = 16;

using cpu::parallel_blocks;

// The indices as int32 (the values were checked to lie in [-1, Tk)), contiguous: no copy
// for the int32 lists fastattn.masks and topk_keys make.
at::Tensor int32_indices(const at::Tensor& indices, int64_t keys) {
  TORCH_CHECK_VALUE(keys <= std::numeric_limits<int32_t>::max(), "sparse_attention on the CPU takes at most 2^31 - 1 keys");
  return indices.to(at::kInt).contiguous();
}

// Shapes and raw pointers of one call, all contiguous. kDim > 0 fixes D at compile time
// (the common head sizes, see with_head_dim), so the row loops unroll fully.
template <class scalar_t, int kDim>
struct Problem {
  int64_t B, H, Tq, Tk, D, L, index_batch, index_heads;
  scalar_t scale;
  const scalar_t *q, *k, *v;
  const int32_t* indices;

  Problem(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_, const at::Tensor& indices_, double s)
      : B(q_.size(0)), H(q_.size(1)), Tq(q_.size(2)), Tk(k_.size(2)), D(q_.size(3)), L(indices_.size(3)),
        index_batch(indices_.size(0)), index_heads(indices_.size(1)), scale(static_cast<scalar_t>(s)),
        q(q_.data_ptr<scalar_t>()), k(k_.data_ptr<scalar_t>()), v(v_.data_ptr<scalar_t>()),
        indices(indices_.data_ptr<int32_t>()) {}

  int64_t dim() const { return kDim > 0 ? kDim : D; }

  // The index set of (b, h) after broadcasting.
  int64_t index_set(int64_t b, int64_t h) const {
    return (index_batch == 1 ? 0 : b) * index_heads + (index_heads == 1 ? 0 : h);
  }
  int64_t list_row(int64_t row) const {  // row = (b H + h) Tq + i
    const int64_t bh = row / Tq;
    return index_set(bh / H, bh % H) * Tq + row % Tq;
  }
  // Writes the keys `row` lists to slots, in slot order without its empty slots, and
  // returns their number: the loops then run over listed keys only. Rows of a mask differ
  // in length (local_global's global row lists every key, the others a few dozen), so
  // most slots of a (T, L) list can be empty, and stepping over them cost more than the
  // listed ones. Done per row into a task's scratch, not for the whole list up front:
  // a (B, H, T, L) copy of int64 keys cost more in page faults than the attention.
  int64_t listed_slots(int64_t row, int64_t* slots) const {
    const int32_t* listed = indices + list_row(row) * L;
    // Lists usually come packed (listed keys first, as fastattn.masks and topk_keys make
    // them): then a scan and a copy do, without the compaction's chain of each store's
    // position on the count before it.
    int64_t count = 0;
    while (count < L && listed[count] >= 0) ++count;
    bool packed = true;
    for (int64_t l = count; l < L; ++l) packed &= listed[l] < 0;
    if (packed) {
      std::copy(listed, listed + count, slots);
      return count;
    }
    count = 0;
    for (int64_t l = 0; l < L; ++l) {
      slots[count] = listed[l];
      count += listed[l] >= 0;
    }
    return count;
  }

  const scalar_t* key(int64_t bh, int64_t j) const { return k + (bh * Tk + j) * dim(); }
  const scalar_t* value(int64_t bh, int64_t j) const { return v + (bh * Tk + j) * dim(); }
};

// Random key lists miss the caches on every row; asking for the rows of the next block of
// slots overlaps those misses with the arithmetic on the current one.
constexpr int64_t kSlotBlock = 8;  // slots per step of row_dots: eight_dots's width

// Keys per step of KeyListTile::dots: eight sums of eight, enough independent
// multiply-adds to cover their latency.
constexpr int64_t kTileBlock = 64;

// The row scratch of one task: kTileBlock more than the widest list, so a block of slots
// never runs past it.
template <class T>
std::vector<T> row_buffer(int64_t L) {
  return std::vector<T>(L + kTileBlock);
}

// Asks for row slots[l] of `rows` (one (batch, head)'s (Tk, D) matrix) for l in [from, to);
// kWrite when the rows will be updated in place.
template <bool kWrite = false, class scalar_t, int kDim>
[[gnu::always_inline]] inline void prefetch_rows(const Problem<scalar_t, kDim>& p, const int64_t* slots, int64_t from,
                                                 int64_t to, const scalar_t* rows) {
  for (int64_t l = from; l < to; ++l) {
    const char* row = reinterpret_cast<const char*>(rows + slots[l] * p.dim());
    for (int64_t byte = 0; byte < p.dim() * static_cast<int64_t>(sizeof(scalar_t)); byte += 64) {
      __builtin_prefetch(row + byte, kWrite);
    }
  }
}

// Whether float rows of kDim take eight_dots: a query held in at most eight vectors.
template <class scalar_t, int kDim>
constexpr bool kEightAtOnce = std::is_same_v<scalar_t, float> && kDim > 0 && kDim % 8 == 0 && kDim <= 64;

// dots[l] = scale * (x . rows[slots[l]]) for the first `listed` slots, where `rows` is one
// (batch, head)'s (Tk, D) matrix. Float rows go eight at a time (eight_dots; the last
// block repeats the last slot's row and its extra results land in the scratch past
// `listed`), others one at a time.
template <class scalar_t, int kDim>
[[gnu::always_inline]] inline void row_dots(const Problem<scalar_t, kDim>& p, const scalar_t* x,
                                            const scalar_t* rows, const int64_t* slots, int64_t listed,
                                            scalar_t scale, scalar_t* dots) {
  if constexpr (kEightAtOnce<scalar_t, kDim>) {
    cpu::RowVector<float, kDim> query;
    query.load_from(x);
    const float* block[kSlotBlock];
    for (int64_t l = 0; l < listed; l += kSlotBlock) {
      prefetch_rows(p, slots, std::min(l + kSlotBlock, listed), std::min(l + 2 * kSlotBlock, listed), rows);
      for (int64_t r = 0; r < kSlotBlock; ++r) block[r] = rows + slots[std::min(l + r, listed - 1)] * kDim;
      cpu::eight_dots(query, block, dots + l);
    }
  } else {
    for (int64_t l = 0; l < listed; ++l) {
      prefetch_rows(p, slots, std::min(l + 4, listed), std::min(l + 5, listed), rows);
      dots[l] = cpu::dot(x, rows + slots[l] * p.dim(), p.dim());
    }
  }
  for (int64_t l = 0; l < listed; ++l) dots[l] *= scale;
}

template <class scalar_t, int kDim>
constexpr bool kTiled = kEightAtOnce<scalar_t, kDim>;

// One (batch, head)'s key and value rows of one key list, copied for the rows that share
// the list (each block of the fixed pattern shares one): the keys transposed, so that a
// query's scores are plain multiply-adds over contiguous keys, eight vectors of eight at a
// time with no horizontal sums (eight_dots spends most of its work on those); the values
// contiguous, in list order. Only for float rows of up to 64 (kTiled); for others, serves()
// is always false.
template <class scalar_t, int kDim>
class KeyListTile {
 public:
  explicit KeyListTile(int64_t L) : previous_(row_buffer<int64_t>(L)), in_order_(row_buffer<int64_t>(L)) {
    std::iota(in_order_.begin(), in_order_.end(), int64_t(0));
  }

  // Whether a row of (batch, head) bh that lists `slots` takes its keys and values from the
  // tile: it does when it lists the same keys as the row before it. The tile is filled at
  // the first such row and serves every row after it that does too.
  bool serves(const Problem<scalar_t, kDim>& p, int64_t bh, const int64_t* slots, int64_t listed) {
    if constexpr (!kTiled<scalar_t, kDim>) {
      return false;
    } else {
      if (bh != previous_bh_ || listed != previous_listed_ || !std::equal(slots, slots + listed, previous_.data())) {
        std::copy(slots, slots + listed, previous_.data());
        previous_listed_ = listed;
        previous_bh_ = bh;
        filled_ = false;
        return false;
      }
      if (!filled_ && listed > 0) fill(p.key(bh, 0), p.value(bh, 0), slots, listed);
      filled_ = listed > 0;
      return filled_;
    }
  }

  // dots[l] = scale * (x . key l) for l < width_.
  [[gnu::always_inline]] void dots(const scalar_t* x, scalar_t scale, scalar_t* out) const {
    using Vec = cpu::Vec32<scalar_t>;
    constexpr int kWidth = cpu::kLanes<scalar_t>;
    for (int64_t l0 = 0; l0 < width_; l0 += kTileBlock) {
      Vec sums[kTileBlock / kWidth] = {};
      for (int d = 0; d < kDim; ++d) {
        const scalar_t xd = x[d];
#pragma GCC unroll 8
        for (int u = 0; u < kTileBlock / kWidth; ++u) {
          Vec keys_d;
          cpu::load(keys_d, keys_t_.data() + d * width_ + l0 + kWidth * u);
          sums[u] += xd * keys_d;
        }
      }
#pragma GCC unroll 8
      for (int u = 0; u < kTileBlock / kWidth; ++u) {
        const Vec scaled = scale * sums[u];
        std::memcpy(out + l0 + kWidth * u, &scaled, sizeof(Vec));
      }
    }
  }

  // The value rows in list order, and the slots that name them (0, 1, 2, ...).
  const scalar_t* values() const { return values_.data(); }
  const int64_t* in_order() const { return in_order_.data(); }

 private:
  void fill(const scalar_t* keys, const scalar_t* vals, const int64_t* slots, int64_t listed) {
    width_ = (listed + kTileBlock - 1) / kTileBlock * kTileBlock;
    keys_t_.assign(kDim * width_, scalar_t(0));
    values_.resize(width_ * kDim);
    for (int64_t l = 0; l < listed; ++l) {
      const scalar_t* key = keys + slots[l] * kDim;
      for (int d = 0; d < kDim; ++d) keys_t_[d * width_ + l] = key[d];
      std::memcpy(values_.data() + l * kDim, vals + slots[l] * kDim, kDim * sizeof(scalar_t));
    }
  }

  std::vector<scalar_t> keys_t_;  // (kDim, width_), zeros past the listed keys
  std::vector<scalar_t> values_;  // (width_, kDim)
  int64_t width_ = 0;             // the listed keys rounded up to kTileBlock
  std::vector<int64_t> previous_, in_order_;
  int64_t previous_listed_ = -1, previous_bh_ = -1;
  bool filled_ = false;
};

// sum_l weights[l] * rows[slots[l]] of the first `listed` slots, times `scale`, into dst.
// Rows of two vectors or fewer alternate between two sums, so that the additions of one
// slot do not wait on those of the one before.
template <class scalar_t, int kDim>
[[gnu::always_inline]] inline void weighted_rows(const Problem<scalar_t, kDim>& p, const scalar_t* weights,
                                                 const scalar_t* rows, const int64_t* slots, int64_t listed,
                                                 scalar_t scale, scalar_t* dst) {
  if constexpr (cpu::kInRegisters<scalar_t, kDim>) {
    using Row = cpu::RowVector<scalar_t, kDim>;
    constexpr bool kTwoSums = Row::kParts <= 2;
    // Slots in pairs, each to its own sum (a sum picked by `l % 2` would live in memory).
    constexpr int64_t kStep = kTwoSums ? 2 : 1;
    Row even, odd;
    int64_t l = 0;
    for (; l + kStep <= listed; l += kStep) {
      if (l % kSlotBlock < kStep) {
        prefetch_rows(p, slots, std::min(l + kSlotBlock, listed), std::min(l + 2 * kSlotBlock, listed), rows);
      }
      even.add_scaled(weights[l], rows + slots[l] * kDim);
      if (kTwoSums) odd.add_scaled(weights[l + 1], rows + slots[l + 1] * kDim);
    }
    if (l < listed) even.add_scaled(weights[l], rows + slots[l] * kDim);
    if (kTwoSums) even.add(odd);
    even.store_scaled(dst, scale);
  } else {
    std::fill(dst, dst + p.dim(), scalar_t(0));
    for (int64_t l = 0; l < listed; ++l) {
      prefetch_rows(p, slots, std::min(l + 4, listed), std::min(l + 5, listed), rows);
      const scalar_t* row = rows + slots[l] * p.dim();
      for (int64_t d = 0; d < p.dim(); ++d) dst[d] += weights[l] * row[d];
    }
    for (int64_t d = 0; d < p.dim(); ++d) dst[d] *= scale;
  }
}

// grads[slots[l]] += weights[l] * x for the first `listed` slots, where `grads` is one
// (batch, head)'s (Tk, D) gradient: x in registers where it fits (GCC would not vectorise
// the plain loop, unable to rule out that x and grads overlap).
template <class scalar_t, int kDim>
[[gnu::always_inline]] inline void add_to_key_rows(const Problem<scalar_t, kDim>& p, const int64_t* slots,
                                                   int64_t listed, const scalar_t* weights, const scalar_t* x,
                                                   scalar_t* grads) {
  if constexpr (cpu::kInRegisters<scalar_t, kDim>) {
    cpu::RowVector<scalar_t, kDim> row;
    row.load_from(x);
    for (int64_t l = 0; l < listed; ++l) {
      if (l % kSlotBlock == 0) {
        prefetch_rows<true>(p, slots, std::min(l + kSlotBlock, listed), std::min(l + 2 * kSlotBlock, listed), grads);
      }
      row.add_scaled_to(grads + slots[l] * kDim, weights[l]);
    }
  } else {
    for (int64_t l = 0; l < listed; ++l) {
      scalar_t* grad = grads + slots[l] * p.dim();
      for (int64_t d = 0; d < p.dim(); ++d) grad[d] += weights[l] * x[d];
    }
  }
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
  const at::Tensor indices = int32_indices(indices_in, k_in.size(2));
  at::Tensor out = new_output(q.sizes(), q.options());
  at::Tensor lse = new_output({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_forward_cpu", [&] {
    with_head_dim(q.size(3), [&](auto dim) {
      constexpr int kDim = decltype(dim)::value;
      const Problem<scalar_t, kDim> p(q, k, v, indices, scale);
      scalar_t* out_data = out.data_ptr<scalar_t>();
      scalar_t* lse_data = lse.data_ptr<scalar_t>();
      parallel_blocks(p.B * p.H * p.Tq, kRowsPerTask, [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
        std::vector<scalar_t> terms = row_buffer<scalar_t>(p.L);
        std::vector<int64_t> slot_buffer = row_buffer<int64_t>(p.L);
        const int64_t* slots = slot_buffer.data();
        KeyListTile<scalar_t, kDim> tile(p.L);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t bh = row / p.Tq;
          const int64_t listed = p.listed_slots(row, slot_buffer.data());
          scalar_t* dst = out_data + row * p.dim();
          const bool tiled = tile.serves(p, bh, slots, listed);
          if (tiled) {
            tile.dots(p.q + row * p.dim(), p.scale, terms.data());
          } else {
            row_dots(p, p.q + row * p.dim(), p.key(bh, 0), slots, listed, p.scale, terms.data());
          }
          const scalar_t row_max = cpu::row_maximum(terms.data(), listed);
          if (row_max == -math::infinity<scalar_t>()) {  // no key: every shifted_exp term is 0
            std::fill(dst, dst + p.dim(), scalar_t(0));
            lse_data[row] = math::softmax_lse(row_max, scalar_t(0));
            continue;
          }
          const scalar_t sum = cpu::exp_shifted(terms.data(), listed, row_max, terms.data());
          // The terms unnormalised, one division per row: sum >= 1, the largest key's term being exp(0).
          weighted_rows(p, terms.data(), tiled ? tile.values() : p.value(bh, 0), tiled ? tile.in_order() : slots,
                        listed, 1 / sum, dst);
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
  const at::Tensor indices = int32_indices(indices_in, k_in.size(2));
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
      const Problem<scalar_t, kDim> p(q, k, v, indices, scale);
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
        std::vector<scalar_t> probs = row_buffer<scalar_t>(p.L), grad_scores = row_buffer<scalar_t>(p.L);
        std::vector<int64_t> slot_buffer = row_buffer<int64_t>(p.L);
        const int64_t* slots = slot_buffer.data();
        for (int64_t task = begin; task < end; ++task) {
          const int64_t share = task / pairs, bh = task % pairs;
          scalar_t* dk = share_rows(grad_k, extra_grad_k, share, bh);
          scalar_t* dv = share_rows(grad_v, extra_grad_v, share, bh);
          const int64_t first = bh * p.Tq + share * rows_per_share;
          const int64_t last = bh * p.Tq + std::min(p.Tq, (share + 1) * rows_per_share);
          for (int64_t row = first; row < last; ++row) {
            const int64_t listed = p.listed_slots(row, slot_buffer.data());
            const scalar_t* query = p.q + row * p.dim();
            const scalar_t* grad_row = dO + row * p.dim();
            scalar_t* dq_row = dq + row * p.dim();
            if (listed == 0 || lse_data[row] == math::infinity<scalar_t>()) {  // every probability is 0
              std::fill(dq_row, dq_row + p.dim(), scalar_t(0));
              continue;
            }
            const scalar_t delta = cpu::dot(grad_row, out_data + row * p.dim(), p.dim());  // dO_i . out_i
            // The scores again, as probabilities through the saved lse, and dO_i . v_j.
            row_dots(p, query, p.key(bh, 0), slots, listed, p.scale, probs.data());
            cpu::exp_shifted(probs.data(), listed, lse_data[row], probs.data());
            row_dots(p, grad_row, p.value(bh, 0), slots, listed, scalar_t(1), grad_scores.data());
            for (int64_t l = 0; l < listed; ++l) {
              grad_scores[l] = p.scale * math::softmax_logit_grad(probs[l], grad_scores[l], delta);
            }
            weighted_rows(p, grad_scores.data(), p.key(bh, 0), slots, listed, scalar_t(1), dq_row);
            add_to_key_rows(p, slots, listed, grad_scores.data(), query, dk);
            add_to_key_rows(p, slots, listed, probs.data(), grad_row, dv);
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
