#pragma once

// topk_keys' "hamming" selection on the CPU, one query row at a time (SPEC section 3): the
// row's scores against every key, the lowest score still taken among the L best, the keys
// at or above it, and those placed best first. Every pass but the last reads the row's
// scores from L1 and is vectorised (by GCC, or by intrinsics where GCC left it scalar),
// about a cycle per key or less; the last visits only the keys at or above the threshold.
//
// The callers run inside cpu::parallel_blocks, which compiles one copy of a block per
// instruction set (instruction_sets.h): everything here is always_inline but the loops
// written for one instruction set (their own target attribute, picked at run time) and
// the scalar placement (noinline, the same in every copy).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "fastattn/lsh_select.h"
#include "instruction_sets.h"

namespace fastattn::cpu::hamming {

using Score = int16_t;  // 0 .. 256 equal bits, -1 for a padded key

// How many consecutive score values one counting pass tallies.
constexpr int kBinsPerPass = 8;

// Per-task scratch, reused across rows.
struct Scratch {
  // collect_at_least may write this many entries past the last candidate
  static constexpr int64_t kCandidateSlack = 16;

  std::vector<Score> scores;
  std::vector<Score> ordered;  // the scores in the row's tie-break order
  std::vector<int32_t> candidates;
  std::vector<int64_t> next;    // keys per score, then the next free slot per score
  std::vector<int32_t> placed;  // the candidates' positions, best score first

  Scratch(int64_t keys, int n_bits)
      : scores(keys), ordered(keys), candidates(keys + kCandidateSlack), next(n_bits + 1), placed(keys) {}
};

// scores[j] -1 where key j is padded, as an OR with 0 or -1: GCC left a select scalar.
[[gnu::always_inline]] inline void mark_padded(const bool* padding, int64_t keys, Score* scores) {
  const uint8_t* padded = reinterpret_cast<const uint8_t*>(padding);  // a bool is one byte, 0 or 1
#pragma GCC ivdep
  for (int64_t j = 0; j < keys; ++j) scores[j] |= static_cast<Score>(-static_cast<Score>(padded[j]));
}

// scores[j]: equal bits of query_code and key j among the first n_bits, -1 where padded.
// kWords > 0 fixes the code width at compile time, so the loop vectorises (eight keys per
// instruction with AVX-512 VPOPCNTDQ; scalar population counts without it).
template <int kWords>
[[gnu::always_inline]] inline void wide_scores(const int64_t* query_code, const int64_t* key_codes,
                                               const bool* padding, int64_t keys, int words, int n_bits,
                                               Score* scores) {
  const int width = kWords > 0 ? kWords : words;
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = static_cast<Score>(lsh::equal_bits(query_code, key_codes + j * width, width, n_bits));
  }
  if (padding) mark_padded(padding, keys, scores);
}

// Set bits of a 32-bit word by shifts, masks and adds: GCC vectorises this over keys in
// every copy (eight keys per AVX2 instruction), where it leaves __builtin_popcount scalar
// unless the CPU has VPOPCNTDQ.
[[gnu::always_inline]] inline uint32_t popcount32(uint32_t x) {
  x = x - ((x >> 1) & 0x55555555u);
  x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
  x = (x + (x >> 4)) & 0x0f0f0f0fu;
  return (x + (x >> 8) + (x >> 16) + (x >> 24)) & 0x3fu;  // the four byte counts, at most 32
}

// wide_scores for codes of at most 32 bits (the modules' default), from the low words of
// the key codes, lsh::equal_bits' rule on 32-bit words.
[[gnu::always_inline]] inline void narrow_scores(int64_t query_code, const uint32_t* key_words, const bool* padding,
                                                 int64_t keys, int n_bits, Score* scores) {
  const uint32_t in_code = static_cast<uint32_t>(lsh::word_mask(0, n_bits));
  const uint32_t query = static_cast<uint32_t>(query_code);
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = static_cast<Score>(n_bits - static_cast<int>(popcount32((query ^ key_words[j]) & in_code)));
  }
  if (padding) mark_padded(padding, keys, scores);
}

// The j whose score is at least `threshold`, in increasing order, into candidates; returns
// how many. They are a few percent of the keys, so a scalar loop spends its time on the
// others: the vector copies take 16 or 32 keys per comparison and write their hits with no
// branch, and may write up to Scratch::kCandidateSlack entries past the last hit.
[[gnu::always_inline]] inline int64_t collect_at_least_scalar(const Score* scores, int64_t begin, int64_t keys,
                                                              int threshold, int32_t* candidates) {
  int64_t found = 0;
  for (int64_t j = begin; j < keys; ++j) {
    candidates[found] = static_cast<int32_t>(j);
    found += scores[j] >= threshold;
  }
  return found;
}

#if defined(__x86_64__) && defined(__GNUC__)
FASTATTN_AVX512_POPCOUNT inline int64_t collect_at_least_avx512(const Score* scores, int64_t keys, int threshold,
                                                                int32_t* candidates) {
  const __m512i below = _mm512_set1_epi16(static_cast<int16_t>(threshold - 1));
  const __m512i first_half = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i sixteen = _mm512_set1_epi32(16);
  int64_t found = 0, j = 0;
  for (; j + 32 <= keys; j += 32) {
    const __mmask32 hits = _mm512_cmpgt_epi16_mask(_mm512_loadu_si512(scores + j), below);
    const __m512i low = _mm512_add_epi32(first_half, _mm512_set1_epi32(static_cast<int32_t>(j)));
    const __mmask16 low_hits = static_cast<__mmask16>(hits), high_hits = static_cast<__mmask16>(hits >> 16);
    _mm512_storeu_si512(candidates + found, _mm512_maskz_compress_epi32(low_hits, low));
    found += __builtin_popcount(low_hits);
    _mm512_storeu_si512(candidates + found, _mm512_maskz_compress_epi32(high_hits, _mm512_add_epi32(low, sixteen)));
    found += __builtin_popcount(high_hits);
  }
  return found + collect_at_least_scalar(scores, j, keys, threshold, candidates + found);
}

// For each byte m, the positions of m's set bits in increasing order, one per nibble from
// the lowest: AVX2 has no compress, so eight hits become eight lane offsets by a lookup.
struct SetBitPositions {
  uint32_t packed[256];
  constexpr SetBitPositions() : packed() {
    for (int m = 0; m < 256; ++m) {
      for (int bit = 0, count = 0; bit < 8; ++bit) {
        if (m >> bit & 1) packed[m] |= static_cast<uint32_t>(bit) << (4 * count++);
      }
    }
  }
};
inline constexpr SetBitPositions kSetBitPositions{};

// 16 keys per step: one comparison, their 16 hit bits, and per group of eight the offsets
// of its hits from the table, unpacked by a variable shift and written as one vector.
FASTATTN_AVX2 inline int64_t collect_at_least_avx2(const Score* scores, int64_t keys, int threshold,
                                                   int32_t* candidates) {
  const __m256i below = _mm256_set1_epi16(static_cast<int16_t>(threshold - 1));
  const __m256i nibble_shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), low_nibble = _mm256_set1_epi32(15);
  int64_t found = 0, j = 0;
  for (; j + 16 <= keys; j += 16) {
    const __m256i hits16 = _mm256_cmpgt_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scores + j)), below);
    // packs keeps one byte per key: keys 0-7 in bytes 0-7, keys 8-15 in bytes 16-23.
    const uint32_t bytes = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_packs_epi16(hits16, hits16)));
    const uint32_t groups[2] = {bytes & 0xffu, (bytes >> 16) & 0xffu};
    for (int g = 0; g < 2; ++g) {
      const __m256i offsets = _mm256_and_si256(
          _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(kSetBitPositions.packed[groups[g]])), nibble_shifts),
          low_nibble);
      const __m256i keys8 = _mm256_add_epi32(offsets, _mm256_set1_epi32(static_cast<int32_t>(j + 8 * g)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(candidates + found), keys8);
      found += __builtin_popcount(groups[g]);
    }
  }
  return found + collect_at_least_scalar(scores, j, keys, threshold, candidates + found);
}
#endif

[[gnu::always_inline]] inline int64_t collect_at_least(const Score* scores, int64_t keys, int threshold,
                                                       int32_t* candidates) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512_popcount()) return collect_at_least_avx512(scores, keys, threshold, candidates);
  if (cpu_has_avx2()) return collect_at_least_avx2(scores, keys, threshold, candidates);
#endif
  return collect_at_least_scalar(scores, 0, keys, threshold, candidates);
}

#if defined(__x86_64__) && defined(__GNUC__)
// counts[b] += the keys scoring top - b, 32 keys per step: a comparison into a mask and a
// masked addition per bin on int16 lanes. The int16 tallies go into counts before they
// could overflow.
FASTATTN_AVX512_POPCOUNT inline void count_top_bins_avx512(const Score* scores, int64_t keys, int top,
                                                           int32_t* counts) {
  constexpr int64_t kStepsPerFlush = 32767;  // the most an int16 lane can count
  const __m512i top_lanes = _mm512_set1_epi16(static_cast<int16_t>(top)), ones = _mm512_set1_epi16(1);
  int64_t j = 0;
  while (j + 32 <= keys) {
    __m512i tally[kBinsPerPass];
    for (int b = 0; b < kBinsPerPass; ++b) tally[b] = _mm512_setzero_si512();
    for (int64_t step = 0; step < kStepsPerFlush && j + 32 <= keys; ++step, j += 32) {
      const __m512i below_top = _mm512_sub_epi16(top_lanes, _mm512_loadu_si512(scores + j));
      for (int b = 0; b < kBinsPerPass; ++b) {
        const __mmask32 hits = _mm512_cmpeq_epi16_mask(below_top, _mm512_set1_epi16(static_cast<int16_t>(b)));
        tally[b] = _mm512_mask_add_epi16(tally[b], hits, tally[b], ones);
      }
    }
    for (int b = 0; b < kBinsPerPass; ++b) {  // (GCC 12's _mm512_reduce_add_epi32 warns of an uninitialised read)
      alignas(64) int32_t pair_sums[16];
      _mm512_store_si512(pair_sums, _mm512_madd_epi16(tally[b], ones));
      for (const int32_t sum : pair_sums) counts[b] += sum;
    }
  }
  for (; j < keys; ++j) {
    const int below_top = top - scores[j];
    if (below_top >= 0 && below_top < kBinsPerPass) ++counts[below_top];
  }
}
#endif

// The same on 16 int16 lanes of a GCC vector (one AVX2 register, two SSE ones): a
// comparison (-1 where true) subtracted per bin. A loop over int32 counts, which GCC
// vectorises by itself, takes twice the instructions.
[[gnu::always_inline]] inline void count_top_bins_lanes(const Score* scores, int64_t keys, int top, int32_t* counts) {
  typedef Score Lanes __attribute__((vector_size(32)));
  constexpr int kLanes = sizeof(Lanes) / sizeof(Score);
  constexpr int64_t kStepsPerFlush = 32767;
  int64_t j = 0;
  while (j + kLanes <= keys) {
    Lanes tally[kBinsPerPass] = {};
    for (int64_t step = 0; step < kStepsPerFlush && j + kLanes <= keys; ++step, j += kLanes) {
      Lanes lanes;
      std::memcpy(&lanes, scores + j, sizeof(lanes));
      const Lanes below_top = static_cast<Score>(top) - lanes;
#pragma GCC unroll 8
      for (int b = 0; b < kBinsPerPass; ++b) tally[b] -= below_top == static_cast<Score>(b);
    }
    for (int b = 0; b < kBinsPerPass; ++b) {
      Score lane_counts[kLanes];
      std::memcpy(lane_counts, &tally[b], sizeof(lane_counts));
      for (const Score count : lane_counts) counts[b] += static_cast<uint16_t>(count);
    }
  }
  for (; j < keys; ++j) {
    const int below_top = top - scores[j];
    if (below_top >= 0 && below_top < kBinsPerPass) ++counts[below_top];
  }
}

// counts[b] = the keys scoring top - b, for b < kBinsPerPass.
[[gnu::always_inline]] inline void count_top_bins(const Score* scores, int64_t keys, int top, int32_t* counts) {
  std::fill(counts, counts + kBinsPerPass, 0);
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx512_popcount()) return count_top_bins_avx512(scores, keys, top, counts);
#endif
  count_top_bins_lanes(scores, keys, top, counts);
}

// The lowest score still (partly) taken among the L best; next[s] gets the number of keys
// of each score from the best down to it. Counts kBinsPerPass score values per pass,
// downwards from the best score: the L-th best is usually within a few values of the
// best, so one or two passes find it.
[[gnu::always_inline]] inline int find_threshold(const Score* scores, int64_t keys, int64_t L, int best,
                                                 int64_t* next) {
  int64_t above = 0;
  for (int top = best; top >= 0; top -= kBinsPerPass) {
    int32_t bins[kBinsPerPass];
    count_top_bins(scores, keys, top, bins);
    for (int b = 0; b < kBinsPerPass && top - b >= 0; ++b) {
      const int score = top - b;
      next[score] = bins[b];
      // Score 0 is the floor: keys scoring 0 fill whatever room is left.
      if (above + bins[b] >= L || score == 0) return score;
      above += bins[b];
    }
  }
  return 0;
}

// scores rearranged into query i's tie-break order i, i-1, i+1, i-2, i+2, ...: ordered[d]
// is the score of the d-th key of the row in that order, d < keys (unlike
// lsh::key_in_distance_order, no holes past the shorter side: that side's steps are
// skipped). Pairs of steps sixteen keys at a time, one side reversed and the two
// interleaved by vector shuffles; then the rest of the longer side.
[[gnu::always_inline]] inline void order_by_distance(const Score* scores, int64_t keys, int64_t i, Score* ordered) {
  typedef Score Lanes __attribute__((vector_size(32)));
  typedef int16_t Order __attribute__((vector_size(32)));
  const int64_t both = std::min(i, keys - 1 - i);  // steps m = 1 .. both have a key on each side
  ordered[0] = scores[i];
  int64_t m = 1;
  for (; m + 15 <= both; m += 16) {
    Lanes left, right;
    std::memcpy(&left, scores + i - m - 15, sizeof(left));  // keys i-m-15 .. i-m
    std::memcpy(&right, scores + i + m, sizeof(right));    // keys i+m .. i+m+15
    const Lanes nearest_first = __builtin_shuffle(left, Order{15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0});
    const Lanes low = __builtin_shuffle(nearest_first, right, Order{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23});
    const Lanes high =
        __builtin_shuffle(nearest_first, right, Order{8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31});
    std::memcpy(ordered + 2 * m - 1, &low, sizeof(low));
    std::memcpy(ordered + 2 * m + 15, &high, sizeof(high));
  }
  for (; m <= both; ++m) {
    ordered[2 * m - 1] = scores[i - m];
    ordered[2 * m] = scores[i + m];
  }
  Score* rest = ordered + 2 * both + 1;
  if (i > both) {
    for (int64_t j = i - both - 1; j >= 0; --j) *rest++ = scores[j];
  } else {
    std::copy(scores + i + both + 1, scores + keys, rest);
  }
}

// Places the candidates (the positions d in tie-break order whose key scores at least the
// threshold, increasing) best score first by a counting sort, which keeps their order
// within a score: each lands in its score's next free slot next[score] of placed. The keys
// at the threshold come last, so all of them are placed and the caller keeps the first L
// entries: no test of the room left per key. Stores positions, not keys: the one
// dependency between iterations is next[score], and the keys follow in a vector pass.
// noinline: scalar code, the same in every copy, given its own registers.
[[gnu::noinline]] inline void place_by_score(const Score* ordered, const int32_t* candidates, int64_t count,
                                             int64_t* next, int32_t* placed) {
  for (int64_t c = 0; c < count; ++c) {
    const int32_t d = candidates[c];
    placed[next[ordered[d]]++] = d;
  }
}

// out[n] = the key at position positions[n] of query i's tie-break order
// (order_by_distance): up to 2 * both the two sides alternate, then the longer side walks
// on. Written with selects, not branches, so that GCC may vectorise it.
[[gnu::always_inline]] inline void keys_at_positions(const int32_t* positions, int64_t count, int64_t keys, int64_t i,
                                                     int32_t* out) {
  const int32_t both = static_cast<int32_t>(std::min(i, keys - 1 - i)), query = static_cast<int32_t>(i);
  const int32_t tail_step = i > both ? -1 : 1;
  for (int64_t n = 0; n < count; ++n) {
    const int32_t d = positions[n], step = (d + 1) >> 1;
    const int32_t alternating = query + step - 2 * step * (d & 1), walking = query + tail_step * (d - both);
    out[n] = d <= 2 * both ? alternating : walking;
  }
}

// Writes the L best keys of query i, best first, -1 after the last: the keys scoring above
// the threshold, and as many keys at the threshold as fit, nearest to i first. Works on
// the scores in tie-break order, so the candidates come out of the collection in the
// order they are placed in.
[[gnu::always_inline]] inline void select_row(const Score* scores, int64_t keys, int64_t i, int64_t L, int32_t* out,
                                              Scratch& scratch) {
  if (keys == 0) {
    std::fill(out, out + L, -1);
    return;
  }
  // A query past the last key (more queries than keys) ranks the keys as the last key
  // does: keys - 1, keys - 2, ...
  i = std::min(i, keys - 1);
  Score* ordered = scratch.ordered.data();
  order_by_distance(scores, keys, i, ordered);
  Score best = -1;
  for (int64_t d = 0; d < keys; ++d) best = std::max(best, ordered[d]);
  int64_t taken = 0;
  if (best >= 0) {
    int64_t* next = scratch.next.data();
    const int threshold = find_threshold(ordered, keys, L, best, next);
    int64_t count = 0;
    for (int score = best; score >= threshold; --score) {  // next[s]: where the next key of score s goes
      const int64_t of_score = next[score];
      next[score] = count;
      count += of_score;
    }
    int32_t* candidates = scratch.candidates.data();
    collect_at_least(ordered, keys, threshold, candidates);
    int32_t* placed = scratch.placed.data();
    place_by_score(ordered, candidates, count, next, placed);
    taken = std::min(count, L);
    keys_at_positions(placed, taken, keys, i, out);
  }
  std::fill(out + taken, out + L, -1);
}

}  // namespace fastattn::cpu::hamming
