// sparse_attention on the CPU: one query row at a time over its list of keys, with the
// softmax rules of softmax_math.h. A row's loops run in passes over arrays of its slots
// (the dot products eight slots at a time, the exponentials a vector at a time, then the
// weighted sum of rows), the vector pieces coming from vector_lanes.h. Forward rows that
// list the same keys as their neighbours go eight at a time, one per vector lane
// (SharedListRows).
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

// The row scratch of one task: a block of slots more than the widest list, so that a
// block never runs past it.
template <class T>
std::vector<T> row_buffer(int64_t L) {
  return std::vector<T>(L + kSlotBlock);
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

// Rows taken together when they list the same keys: one row per lane of a vector.
constexpr int64_t kGroupRows = cpu::kLanes<float>;

// Whether rows that agree go as a group (SharedListRows): float rows of up to 32, where it
// measured 1.2x to 1.5x faster than row by row (the fixed pattern, B = 8, H = 12, D = 32,
// T = 2048, forward and forward+backward). At 64 a row's own dot products (eight_dots)
// already fill whole vectors, and the group's forward measured 6% to 25% slower.
template <class scalar_t, int kDim>
constexpr bool kGrouped = kEightAtOnce<scalar_t, kDim> && kDim <= 32;

// Eight slots of a key list, for the list comparisons below.
typedef int32_t SlotLanes __attribute__((vector_size(32)));
constexpr int64_t kSlotLanes = sizeof(SlotLanes) / sizeof(int32_t);

// Whether any lane of a comparison's result is set.
[[gnu::always_inline]] inline bool any_lane(const SlotLanes& flags) {
  uint64_t words[sizeof(SlotLanes) / sizeof(uint64_t)];
  std::memcpy(words, &flags, sizeof(words));
  return (words[0] | words[1] | words[2] | words[3]) != 0;
}

// Whether two raw key lists agree at every slot where both list a key (where one slot is
// empty, -1, the other may hold anything). A vector of slots at a time, stopping at the
// first disagreement: at once for hashed lists and sliding windows.
[[gnu::always_inline]] inline bool lists_agree(const int32_t* a, const int32_t* b, int64_t L) {
  int64_t l = 0;
  for (; l + kSlotLanes <= L; l += kSlotLanes) {
    SlotLanes x, y;
    std::memcpy(&x, a + l, sizeof(x));
    std::memcpy(&y, b + l, sizeof(y));
    if (any_lane((x != y) & (x >= 0) & (y >= 0))) return false;
  }
  for (; l < L; ++l) {
    if (a[l] != b[l] && a[l] >= 0 && b[l] >= 0) return false;
  }
  return true;
}

// Consecutive query rows of one (batch, head) whose key lists agree (lists_agree) go up to
// kGroupRows at once, one row per lane of every vector: each key and value element is
// loaded once and broadcast to the group's rows, and the scores, maxima, exponentials and
// sums are plain vector operations, with no horizontal sums and no pass over the list per
// row. The group attends over the union of its lists; a slot that a row leaves empty gets
// a score of -inf in that row's lane. The fixed pattern's blocks form such groups, with
// shared-QK's dropped self slots included. Float rows of up to 32 only (kGrouped).
template <int kDim>
class SharedListRows {
 public:
  using Vec = cpu::Vec32<float>;

  explicit SharedListRows(int64_t L)
      : union_(L), compact_(L), slots_(L), terms_(L * kGroupRows), grads_(L * kGroupRows) {}

  // Gathers the rows from `row` on (to `limit` at most) whose lists agree, and returns their
  // number; when it is more than 1 and their union lists any key, forward() and
  // backward() may run.
  [[gnu::always_inline]] int64_t gather(const Problem<float, kDim>& p, int64_t row, int64_t limit) {
    const int64_t L = p.L;
    lists_[0] = p.indices + p.list_row(row) * L;
    // Most rows of hashed lists and sliding windows group with nothing: they leave after one
    // comparison, before any copy.
    if (row + 1 >= limit || !lists_agree(lists_[0], p.indices + p.list_row(row + 1) * L, L)) return 1;
    std::copy(lists_[0], lists_[0] + L, union_.data());
    int64_t count = 1;
    for (; count < kGroupRows && row + count < limit; ++count) {
      const int32_t* next = p.indices + p.list_row(row + count) * L;
      if (!lists_agree(union_.data(), next, L)) break;
      for (int64_t l = 0; l < L; ++l) union_[l] = std::max(union_[l], next[l]);
      lists_[count] = next;
    }
    if (count == 1) return 1;
    listed_ = 0;
    for (int64_t l = 0; l < L; ++l) {
      compact_[l] = listed_;
      slots_[listed_] = union_[l];
      listed_ += union_[l] >= 0;
    }
    holes_.clear();
    for (int64_t r = 0; r < count; ++r) find_holes(lists_[r], L, r, r == 0 ? count : kGroupRows);
    return listed_ > 0 ? count : 1;
  }

  // out and lse of the `count` rows gather() found, starting at row `first` of (batch,
  // head) bh. Lanes past `count` repeat the first row and are not written back.
  [[gnu::always_inline]] void forward(const Problem<float, kDim>& p, int64_t bh, int64_t first, int64_t count,
                                      float* out, float* lse) {
    load_lanes(p.q, first, count, p.scale, lanes_);
    lane_dots(lanes_, p.key(bh, 0), terms_.data());
    punch_holes();
    Vec row_max = Vec{} - math::infinity<float>();
    for (int64_t l = 0; l < listed_; ++l) {
      Vec score;
      cpu::load(score, term_lanes(l));
      row_max = row_max > score ? row_max : score;
    }
    // A row whose lane has no key (all -inf) keeps terms of exp(-inf) = 0 and a sum of 0.
    const Vec shift = row_max == -math::infinity<float>() ? Vec{} : row_max;
    Vec sums[2] = {};
    for (int64_t l = 0; l < listed_; ++l) {  // the terms, two sums side by side
      Vec term;
      cpu::load(term, term_lanes(l));
      term -= shift;
      cpu::exp_in_place(term);
      std::memcpy(term_lanes(l), &term, sizeof(term));
      sums[l % 2] += term;
    }
    const Vec sum = sums[0] + sums[1];
    float inverse[kGroupRows];
    for (int r = 0; r < kGroupRows; ++r) inverse[r] = sum[r] > 0 ? 1 / sum[r] : 0.0f;
    weighted_columns(terms_.data(), p.value(bh, 0), first, count, inverse, out);
    for (int64_t r = 0; r < count; ++r) lse[first + r] = math::softmax_lse(shift[r], sum[r]);
  }

  // The backward of the same rows: dq of each, and their terms added to dk and dv (bh's
  // (Tk, D) rows of the gradients), from dO, out and lse of the forward.
  [[gnu::always_inline]] void backward(const Problem<float, kDim>& p, int64_t bh, int64_t first, int64_t count,
                                       const float* grad_out, const float* out, const float* lse, float* dq,
                                       float* dk, float* dv) {
    // The probabilities exp(score - lse): 0 in holes and in rows without a key (lse = +inf).
    load_lanes(p.q, first, count, p.scale, lanes_);
    lane_dots(lanes_, p.key(bh, 0), terms_.data());
    punch_holes();
    Vec row_lse;
    for (int64_t r = 0; r < kGroupRows; ++r) row_lse[r] = lse[first + (r < count ? r : 0)];
    for (int64_t l = 0; l < listed_; ++l) {
      Vec term;
      cpu::load(term, term_lanes(l));
      term -= row_lse;
      cpu::exp_in_place(term);
      std::memcpy(term_lanes(l), &term, sizeof(term));
    }
    // dO_i . v_j, then the scores' gradients scale * p (dO_i . v_j - delta_i).
    load_lanes(grad_out, first, count, 1.0f, lanes_);
    lane_dots(lanes_, p.value(bh, 0), grads_.data());
    float delta[kGroupRows];
    for (int64_t r = 0; r < kGroupRows; ++r) {
      const int64_t row = first + (r < count ? r : 0);
      delta[r] = cpu::dot(grad_out + row * kDim, out + row * kDim, kDim);  // dO_i . out_i
    }
    for (int64_t l = 0; l < listed_; ++l) {
      const float* prob = term_lanes(l);
      float* grad = grads_.data() + l * kGroupRows;
#pragma GCC unroll 8
      for (int r = 0; r < kGroupRows; ++r) grad[r] = p.scale * math::softmax_logit_grad(prob[r], grad[r], delta[r]);
    }
    float ones[kGroupRows];
    std::fill(ones, ones + kGroupRows, 1.0f);
    weighted_columns(grads_.data(), p.key(bh, 0), first, count, ones, dq);
    add_to_slot_rows(grads_.data(), p.q + first * kDim, count, dk);
    add_to_slot_rows(terms_.data(), grad_out + first * kDim, count, dv);
  }

 private:
  // lanes[d] = scale * rows[first + r][d] in lane r (lanes past `count` repeat row first).
  [[gnu::always_inline]] static void load_lanes(const float* rows, int64_t first, int64_t count, float scale,
                                                Vec* lanes) {
    float transposed[kDim][kGroupRows];
    for (int64_t r = 0; r < kGroupRows; ++r) {
      const float* row = rows + (first + (r < count ? r : 0)) * kDim;
      for (int d = 0; d < kDim; ++d) transposed[d][r] = scale * row[d];
    }
    std::memcpy(lanes, transposed, sizeof(transposed));
  }

  // dst[l] (a vector) = lanes . matrix[slot l] for every listed slot, matrix one (batch,
  // head)'s (Tk, D) keys or values. Eight slots at a time, eight independent sums of
  // multiply-adds; the last step repeats the last slot.
  [[gnu::always_inline]] void lane_dots(const Vec* lanes, const float* matrix, float* dst) const {
    for (int64_t l0 = 0; l0 < listed_; l0 += kGroupRows) {
      const float* rows[kGroupRows];
      for (int64_t u = 0; u < kGroupRows; ++u) rows[u] = matrix + slots_[std::min(l0 + u, listed_ - 1)] * kDim;
      Vec sums[kGroupRows] = {};
#pragma GCC unroll 64
      for (int d = 0; d < kDim; ++d) {
#pragma GCC unroll 8
        for (int u = 0; u < kGroupRows; ++u) sums[u] += lanes[d] * rows[u][d];
      }
      for (int64_t u = 0; u < std::min(kGroupRows, listed_ - l0); ++u) {
        std::memcpy(dst + (l0 + u) * kGroupRows, &sums[u], sizeof(Vec));
      }
    }
  }

  // -inf in the score of every hole.
  void punch_holes() {
    for (const Hole& hole : holes_) term_lanes(hole.slot)[hole.lane] = -math::infinity<float>();
  }

  // dst[first + r] = row_scale[r] * sum_l weights[l][r] * matrix[slot l] for r < count.
  // Eight columns per pass, so the eight column sums stay in registers.
  [[gnu::always_inline]] void weighted_columns(const float* weights, const float* matrix, int64_t first,
                                               int64_t count, const float* row_scale, float* dst) const {
#pragma GCC unroll 8
    for (int c = 0; c < kDim; c += kGroupRows) {
      Vec columns[kGroupRows] = {};
      for (int64_t l = 0; l < listed_; ++l) {
        const float* row = matrix + slots_[l] * kDim + c;
        Vec weight;
        cpu::load(weight, weights + l * kGroupRows);
#pragma GCC unroll 8
        for (int u = 0; u < kGroupRows; ++u) columns[u] += weight * row[u];
      }
      for (int64_t r = 0; r < count; ++r) {
#pragma GCC unroll 8
        for (int u = 0; u < kGroupRows; ++u) dst[(first + r) * kDim + c + u] = columns[u][r] * row_scale[r];
      }
    }
  }

  // grads[slot l] += sum over r < count of weights[l][r] * rows[r], for every listed slot:
  // the group's terms of dK (weights dS, rows the queries) or dV (weights P, rows dO).
  [[gnu::always_inline]] void add_to_slot_rows(const float* weights, const float* rows, int64_t count,
                                               float* grads) const {
    for (int64_t l = 0; l < listed_; ++l) {
      cpu::RowVector<float, kDim> sum;
      sum.load_from(grads + slots_[l] * kDim);
      for (int64_t r = 0; r < count; ++r) sum.add_scaled(weights[l * kGroupRows + r], rows + r * kDim);
      sum.store_scaled(grads + slots_[l] * kDim, 1.0f);
    }
  }

  // A slot of the union that a row leaves empty: -inf in the row's lane.
  struct Hole {
    int64_t slot;
    int lane;
  };

  // The holes of row r's raw list against the union (and of the lanes from `repeats` on,
  // which repeat row 0). A vector of slots at a time: rows usually have none or one.
  [[gnu::always_inline]] void find_holes(const int32_t* list, int64_t L, int r, int64_t repeats) {
    for (int64_t l0 = 0; l0 < L; l0 += kSlotLanes) {
      if (l0 + kSlotLanes <= L) {
        SlotLanes x, u;
        std::memcpy(&x, list + l0, sizeof(x));
        std::memcpy(&u, union_.data() + l0, sizeof(u));
        if (!any_lane((x < 0) & (u >= 0))) continue;
      }
      for (int64_t l = l0; l < std::min(l0 + kSlotLanes, L); ++l) {
        if (list[l] >= 0 || union_[l] < 0) continue;
        holes_.push_back({compact_[l], r});
        for (int64_t lane = repeats; lane < kGroupRows; ++lane) holes_.push_back({compact_[l], static_cast<int>(lane)});
      }
    }
  }

  float* term_lanes(int64_t l) { return terms_.data() + l * kGroupRows; }

  Vec lanes_[kDim];                   // the group's queries (or dO), row r in lane r
  const int32_t* lists_[kGroupRows];  // the raw lists of the group's rows
  std::vector<int32_t> union_;        // (L): their union, slot by slot
  std::vector<int64_t> compact_;      // (L): a union slot's place among the listed ones
  std::vector<int64_t> slots_;        // (listed_): the union's keys, empty slots left out
  int64_t listed_ = 0;
  std::vector<Hole> holes_;
  // (listed_, kGroupRows) each, per slot and row: the score, then the term (forward) or
  // probability (backward); the gradient of the score (backward). Floats, not vectors: a
  // std::vector of a vector type loses the type's 32-byte alignment (GCC drops attributes
  // on template arguments).
  std::vector<float> terms_, grads_;
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
        std::conditional_t<kGrouped<scalar_t, kDim>, SharedListRows<kDim>, int> shared_rows(p.L);
        for (int64_t row = begin; row < end; ++row) {
          const int64_t bh = row / p.Tq;
          if constexpr (kGrouped<scalar_t, kDim>) {
            const int64_t count = shared_rows.gather(p, row, std::min(end, (bh + 1) * p.Tq));
            if (count > 1) {
              shared_rows.forward(p, bh, row, count, out_data, lse_data);
              row += count - 1;
              continue;
            }
          }
          const int64_t listed = p.listed_slots(row, slot_buffer.data());
          scalar_t* dst = out_data + row * p.dim();
          row_dots(p, p.q + row * p.dim(), p.key(bh, 0), slots, listed, p.scale, terms.data());
          const scalar_t row_max = cpu::row_maximum(terms.data(), listed);
          if (row_max == -math::infinity<scalar_t>()) {  // no key: every shifted_exp term is 0
            std::fill(dst, dst + p.dim(), scalar_t(0));
            lse_data[row] = math::softmax_lse(row_max, scalar_t(0));
            continue;
          }
          const scalar_t sum = cpu::exp_shifted(terms.data(), listed, row_max, terms.data());
          // The terms unnormalised, one division per row: sum >= 1, the largest key's term being exp(0).
          weighted_rows(p, terms.data(), p.value(bh, 0), slots, listed, 1 / sum, dst);
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
        std::conditional_t<kGrouped<scalar_t, kDim>, SharedListRows<kDim>, int> shared_rows(p.L);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t share = task / pairs, bh = task % pairs;
          scalar_t* dk = share_rows(grad_k, extra_grad_k, share, bh);
          scalar_t* dv = share_rows(grad_v, extra_grad_v, share, bh);
          const int64_t first = bh * p.Tq + share * rows_per_share;
          const int64_t last = bh * p.Tq + std::min(p.Tq, (share + 1) * rows_per_share);
          for (int64_t row = first; row < last; ++row) {
            if constexpr (kGrouped<scalar_t, kDim>) {
              const int64_t count = shared_rows.gather(p, row, last);
              if (count > 1) {
                shared_rows.backward(p, bh, row, count, dO, out_data, lse_data, dq, dk, dv);
                row += count - 1;
                continue;
              }
            }
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
