#pragma once

// The passes of a softmax over one row of scores, a vector at a time: the row's largest
// score, then exp(score - shift) and their sum. Float rows take cpu::exp_in_place, double
// rows math::exp_. A row's last partial vector is padded with -inf, which is neutral for
// the maximum and has exponential 0, so every score goes through the same formula.
//
// Used by sparse_attention (a row's listed slots) and fixed_attention (a dense row of
// logits). Like every loop of instruction_sets.h, always_inline, so each copy of a block
// compiles its own.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastattn/softmax_math.h"
#include "vector_lanes.h"

namespace fastattn::cpu {

// The first `count` (< kLanes) values of x in a vector, the other lanes -inf.
template <class scalar_t>
[[gnu::always_inline]] inline void load_partial(Vec32<scalar_t>& dst, const scalar_t* x, int64_t count) {
  dst = Vec32<scalar_t>{} - math::infinity<scalar_t>();
  std::memcpy(&dst, x, count * sizeof(scalar_t));
}

// The largest of x[0, count); -inf for an empty row or a row of -inf.
template <class scalar_t>
[[gnu::always_inline]] inline scalar_t row_maximum(const scalar_t* x, int64_t count) {
  constexpr int kWidth = kLanes<scalar_t>;
  Vec32<scalar_t> largest = Vec32<scalar_t>{} - math::infinity<scalar_t>(), block;
  int64_t l = 0;
  for (; l + kWidth <= count; l += kWidth) {
    load(block, x + l);
    largest = largest > block ? largest : block;
  }
  if (l < count) {
    load_partial(block, x + l, count - l);
    largest = largest > block ? largest : block;
  }
  scalar_t lanes[kWidth];
  std::memcpy(lanes, &largest, sizeof(largest));
  scalar_t row_max = lanes[0];
  for (int u = 1; u < kWidth; ++u) row_max = math::max_(row_max, lanes[u]);
  return row_max;
}

template <class scalar_t>
[[gnu::always_inline]] inline void exp_lanes(Vec32<scalar_t>& block) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    exp_in_place(block);
  } else {
    for (int u = 0; u < kLanes<scalar_t>; ++u) block[u] = math::exp_(block[u]);
  }
}

// out[l] = exp(x[l] - shift) for l in [0, count) (out may be x); returns their sum. A
// finite shift, or +inf for a row whose every term is 0.
template <class scalar_t>
[[gnu::always_inline]] inline scalar_t exp_shifted(const scalar_t* x, int64_t count, scalar_t shift, scalar_t* out) {
  constexpr int kWidth = kLanes<scalar_t>;
  Vec32<scalar_t> sum = {}, block;
  int64_t l = 0;
  for (; l + kWidth <= count; l += kWidth) {
    load(block, x + l);
    block -= shift;
    exp_lanes<scalar_t>(block);
    std::memcpy(out + l, &block, sizeof(block));
    sum += block;
  }
  if (l < count) {
    load_partial(block, x + l, count - l);
    block -= shift;
    exp_lanes<scalar_t>(block);
    std::memcpy(out + l, &block, (count - l) * sizeof(scalar_t));
    sum += block;
  }
  return lane_sum<scalar_t>(sum);
}

}  // namespace fastattn::cpu
