#pragma once

// Per-pair rules of top-k key selection (SPEC section 3), shared by the CPU and CUDA kernels.

#include <stdint.h>

#include <type_traits>

#include "fastattn/host_device.h"

namespace fastattn::lsh {

constexpr int kMaxBits = 256;
constexpr int kMaxWords = kMaxBits / 64;

FASTATTN_HOST_DEVICE int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

// Mask of the bits of word w that lie among the first n_bits bits of a code.
FASTATTN_HOST_DEVICE uint64_t word_mask(int w, int n_bits) {
  const int bits = n_bits - 64 * w;
  return bits >= 64 ? ~uint64_t(0) : (bits <= 0 ? uint64_t(0) : (uint64_t(1) << bits) - 1);
}

// Number of the first n_bits bits on which two codes agree (the "hamming" score).
FASTATTN_HOST_DEVICE int equal_bits(const int64_t* a, const int64_t* b, int words, int n_bits) {
  int differ = 0;
  for (int w = 0; w < words; ++w) {
    differ += popcount64((static_cast<uint64_t>(a[w]) ^ static_cast<uint64_t>(b[w])) & word_mask(w, n_bits));
  }
  return n_bits - differ;
}

// The d-th key in the tie-break order of query i: i, i-1, i+1, i-2, i+2, ... (smaller
// |i - j| first, then smaller j). Returns -1 for positions outside [0, keys).
FASTATTN_HOST_DEVICE int64_t key_in_distance_order(int64_t i, int64_t d, int64_t keys) {
  const int64_t step = (d + 1) / 2;
  const int64_t j = (d % 2 == 1) ? i - step : i + step;
  return (j >= 0 && j < keys) ? j : -1;
}

// How many steps of key_in_distance_order cover every key in [0, keys).
FASTATTN_HOST_DEVICE int64_t distance_order_length(int64_t i, int64_t keys) {
  const int64_t below = i, above = keys - 1 - i;
  const int64_t reach = below > above ? below : above;
  return reach < 0 ? 0 : 2 * reach + 1;
}

// One step of bucket mode's q . k, the same on both devices: the product rounded, then
// the sum, in order of d. CUDA would otherwise fuse them (fmaf) and the CPU not, and the
// two would rank near-ties differently; lsh.cpp is compiled with -ffp-contract=off so
// that no compiler fuses the host expression either.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t add_product(acc_t sum, acc_t a, acc_t b) {
#if defined(__CUDA_ARCH__)
  static_assert(std::is_same_v<acc_t, float>, "CUDA ranks bucket candidates in float");
  return __fadd_rn(sum, __fmul_rn(a, b));
#else
  return sum + a * b;
#endif
}

// q . k over dim coordinates, by add_product.
template <class acc_t>
FASTATTN_HOST_DEVICE acc_t bucket_dot(const acc_t* q, const acc_t* k, int64_t dim) {
  acc_t dot = 0;
  for (int64_t d = 0; d < dim; ++d) dot = add_product(dot, q[d], k[d]);
  return dot;
}

// True when key a ranks before key b for query i: higher score, then smaller |i - j|,
// then smaller j. A NaN score ranks after every number and ties with another NaN, so the
// order stays strict and total (the CPU sort and the CUDA merge rely on that).
template <class score_t>
FASTATTN_HOST_DEVICE bool ranks_before(score_t score_a, int64_t a, score_t score_b, int64_t b, int64_t i) {
  const bool nan_a = score_a != score_a, nan_b = score_b != score_b;  // always false for integer scores
  if (nan_a != nan_b) return nan_b;
  if (!nan_a && score_a != score_b) return score_a > score_b;
  const int64_t dist_a = a > i ? a - i : i - a, dist_b = b > i ? b - i : i - b;
  if (dist_a != dist_b) return dist_a < dist_b;
  return a < b;
}

}  // namespace fastattn::lsh
