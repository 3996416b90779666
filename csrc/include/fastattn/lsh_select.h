#pragma once

// Per-pair rules of top-k key selection (SPEC section 3), shared by the CPU and CUDA kernels.

#include <stdint.h>

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

// True when key a ranks before key b for query i: higher score, then smaller |i - j|,
// then smaller j.
template <class score_t>
FASTATTN_HOST_DEVICE bool ranks_before(score_t score_a, int64_t a, score_t score_b, int64_t b, int64_t i) {
  if (score_a != score_b) return score_a > score_b;
  const int64_t dist_a = a > i ? a - i : i - a, dist_b = b > i ? b - i : i - b;
  if (dist_a != dist_b) return dist_a < dist_b;
  return a < b;
}

}  // namespace fastattn::lsh
