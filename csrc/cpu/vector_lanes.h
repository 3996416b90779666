#pragma once

// Rows of head_dim values as GCC vectors of 32 bytes: one AVX register in the AVX2 copy of
// a loop (instruction_sets.h), two SSE registers in the baseline one. The loops are
// written as vectors because GCC left their scalar forms mostly scalar: a row's dot
// product as sixteen partial sums and halving steps, a row of sums split into scalar
// registers.
//
// Vectors go by reference, never by value: passing or returning a vector type changes
// the ABI between the copies (GCC's -Wpsabi), even where everything is inlined.

#include <cstdint>
#include <cstring>

namespace fastattn::cpu {

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
template <class scalar_t>
using Vec32 = typename Vector32<scalar_t>::type;
template <class scalar_t>
constexpr int kLanes = sizeof(Vec32<scalar_t>) / sizeof(scalar_t);

template <class scalar_t>
[[gnu::always_inline]] inline void load(Vec32<scalar_t>& dst, const scalar_t* src) {
  std::memcpy(&dst, src, sizeof(dst));
}

template <class scalar_t>
[[gnu::always_inline]] inline scalar_t lane_sum(const Vec32<scalar_t>& x) {
  scalar_t lanes[kLanes<scalar_t>];
  std::memcpy(lanes, &x, sizeof(x));
#pragma GCC unroll 4
  for (int width = kLanes<scalar_t> / 2; width > 0; width /= 2) {
#pragma GCC unroll 4
    for (int u = 0; u < width; ++u) lanes[u] += lanes[u + width];
  }
  return lanes[0];
}

// a . b over n values: two vectors of partial sums, so independent FMA chains run side by
// side, folded by halving steps at the end.
template <class scalar_t>
[[gnu::always_inline]] inline scalar_t dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  using Vec = Vec32<scalar_t>;
  constexpr int kWidth = kLanes<scalar_t>;
  const auto add_products = [a, b](Vec& sum, int64_t d) __attribute__((always_inline)) {
    Vec x, y;
    load(x, a + d);
    load(y, b + d);
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
  scalar_t sum = lane_sum<scalar_t>(first);
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Whether a row of kDim values is worth holding in vector registers (RowVector): a row
// fixed at compile time, a whole number of vectors, at most half of AVX2's sixteen.
template <class scalar_t, int kDim>
constexpr bool kInRegisters = kDim > 0 && kDim % kLanes<scalar_t> == 0 && kDim * sizeof(scalar_t) <= 256;

// A row of kDim values held in vector registers. The loops over the parts are unrolled by
// pragma: a part indexed by a loop counter would live in memory, and a sum of rows would
// then wait on a store and a reload for every row added.
template <class scalar_t, int kDim>
struct RowVector {
  static_assert(kDim > 0 && kDim % kLanes<scalar_t> == 0, "a whole number of vectors");
  using Vec = Vec32<scalar_t>;
  static constexpr int kParts = kDim / kLanes<scalar_t>;
  Vec parts[kParts] = {};

  [[gnu::always_inline]] void load_from(const scalar_t* x) {
#pragma GCC unroll 16
    for (int c = 0; c < kParts; ++c) load(parts[c], x + c * kLanes<scalar_t>);
  }
  [[gnu::always_inline]] void add_scaled(scalar_t alpha, const scalar_t* x) {
#pragma GCC unroll 16
    for (int c = 0; c < kParts; ++c) {
      Vec row;
      load(row, x + c * kLanes<scalar_t>);
      parts[c] += alpha * row;
    }
  }
  [[gnu::always_inline]] void add(const RowVector& other) {
#pragma GCC unroll 16
    for (int c = 0; c < kParts; ++c) parts[c] += other.parts[c];
  }
  // y += alpha * this row, in place in memory.
  [[gnu::always_inline]] void add_scaled_to(scalar_t* y, scalar_t alpha) const {
#pragma GCC unroll 16
    for (int c = 0; c < kParts; ++c) {
      Vec row;
      load(row, y + c * kLanes<scalar_t>);
      row += alpha * parts[c];
      std::memcpy(y + c * kLanes<scalar_t>, &row, sizeof(Vec));
    }
  }
  [[gnu::always_inline]] void store_scaled(scalar_t* dst, scalar_t alpha) const {
#pragma GCC unroll 16
    for (int c = 0; c < kParts; ++c) {
      const Vec scaled = alpha * parts[c];
      std::memcpy(dst + c * kLanes<scalar_t>, &scaled, sizeof(Vec));
    }
  }
};

// dst[l] = query . rows[l] for eight rows of kDim floats at once: eight vectors of partial
// sums, folded into one vector of the eight totals by three rounds of pairwise shuffles
// (7 additions for 8 rows, instead of 3 per row when each row is folded alone).
template <int kDim>
[[gnu::always_inline]] inline void eight_dots(const RowVector<float, kDim>& query, const float* const* rows,
                                              float* dst) {
  using Vec = Vec32<float>;
  typedef int32_t Order __attribute__((vector_size(32)));
  Vec partial[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) {
    Vec row;
    load(row, rows[r]);
    partial[r] = query.parts[0] * row;
#pragma GCC unroll 16
    for (int c = 1; c < RowVector<float, kDim>::kParts; ++c) {
      load(row, rows[r] + c * 8);
      partial[r] += query.parts[c] * row;
    }
  }
  // Round 1: lanes of rows 2r and 2r + 1 interleaved, neighbours added (unpck{l,h}ps).
  Vec pairs[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    pairs[r] = __builtin_shuffle(partial[2 * r], partial[2 * r + 1], Order{0, 8, 1, 9, 4, 12, 5, 13}) +
               __builtin_shuffle(partial[2 * r], partial[2 * r + 1], Order{2, 10, 3, 11, 6, 14, 7, 15});
  }
  // Round 2: lane i of quads[h] holds row 4h + i % 4's sum over its lanes 0-3 (i < 4) or 4-7.
  Vec quads[2];
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    quads[h] = __builtin_shuffle(pairs[2 * h], pairs[2 * h + 1], Order{0, 1, 8, 9, 4, 5, 12, 13}) +
               __builtin_shuffle(pairs[2 * h], pairs[2 * h + 1], Order{2, 3, 10, 11, 6, 7, 14, 15});
  }
  // Round 3: the two halves of each row's sum added (vperm2f128).
  const Vec totals = __builtin_shuffle(quads[0], quads[1], Order{0, 1, 2, 3, 8, 9, 10, 11}) +
                     __builtin_shuffle(quads[0], quads[1], Order{4, 5, 6, 7, 12, 13, 14, 15});
  std::memcpy(dst, &totals, sizeof(totals));
}

// exp of every lane in place, for lanes at most 88 (softmax arguments are at most 0):
// Cephes' expf (a Cody-Waite reduction by ln 2 and a degree-7 polynomial), at most 1 ulp
// from glibc's expf at every float in [-87.3, 0] (checked exhaustively in the AVX2 copy).
// Lanes below log(FLT_MIN) become 0, -inf included; NaN stays NaN. glibc's expf is a call
// per value, several times the cost of the softmax around it.
[[gnu::always_inline]] inline void exp_in_place(Vec32<float>& x) {
  using Vec = Vec32<float>;
  typedef int32_t Ints __attribute__((vector_size(32)));
  const auto underflows = x < -87.336544f;  // log(FLT_MIN): 2^n below would not be normal
  // n = round(x / ln 2) by the float rounding of x / ln 2 + 1.5 * 2^23, exact for |n| < 2^22.
  constexpr float kRound = 12582912.0f;
  const Vec n = (x * 1.44269504088896341f + kRound) - kRound;
  Vec r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;  // ln 2 in two parts, so n ln 2 subtracts exactly
  Vec poly = 1.9875691500e-4f * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * (r * r) + r + 1.0f;
  const Ints exponent = (__builtin_convertvector(n, Ints) + 127) << 23;  // the float 2^n
  Vec scale;
  std::memcpy(&scale, &exponent, sizeof(scale));
  x = underflows ? Vec{} : poly * scale;
}

}  // namespace fastattn::cpu
