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

// The candidates are placed in this many interleaved chains (see place_by_score).
constexpr int kPlacementChains = 4;

// Per-task scratch, reused across rows.
struct Scratch {
  // collect_at_least may write this many entries past the last candidate
  static constexpr int64_t kCandidateSlack = 16;

  std::vector<Score> scores;
  std::vector<Score> ordered;  // the scores in the row's tie-break order
  std::vector<int32_t> candidates;
  std::vector<int32_t> next;    // per chain, keys per score, then the next free slot per score
  std::vector<int32_t> placed;  // the candidates' positions, best score first
  int threshold = 0;            // the last row's, where the next row's search starts

  Scratch(int64_t keys, int n_bits)
      : scores(keys), ordered(keys), candidates(keys + kCandidateSlack), next(kPlacementChains * (n_bits + 1)),
        placed(keys) {}
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

// The equal bits of `query` and key_words[j] among in_code's bits (lsh::equal_bits' rule
// on 32-bit words), from `begin` on, one key at a time.
[[gnu::always_inline]] inline void narrow_scores_scalar(uint32_t query, const uint32_t* key_words, int64_t begin,
                                                        int64_t keys, uint32_t in_code, int n_bits, Score* scores) {
  for (int64_t j = begin; j < keys; ++j) {
    scores[j] = static_cast<Score>(n_bits - static_cast<int>(popcount32((query ^ key_words[j]) & in_code)));
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The set bits of each 16-bit half of eight keys' differing bits (from `query`, among
// `mask`), as int16: per nibble by a table lookup (VPSHUFB), the byte counts summed in
// pairs (VPMADDUBSW).
FASTATTN_AVX2 [[gnu::always_inline]] inline __m256i half_word_popcounts(const uint32_t* eight_keys, __m256i query,
                                                                        __m256i mask) {
  const __m256i nibble_counts = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                                 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
  const __m256i differ =
      _mm256_and_si256(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(eight_keys)), query), mask);
  const __m256i low = _mm256_shuffle_epi8(nibble_counts, _mm256_and_si256(differ, low_nibbles));
  const __m256i high = _mm256_shuffle_epi8(nibble_counts, _mm256_and_si256(_mm256_srli_epi16(differ, 4), low_nibbles));
  return _mm256_maddubs_epi16(_mm256_add_epi8(low, high), _mm256_set1_epi8(1));
}

// 16 keys per step, the two halves of each key summed by VPHADDW: about 1.4 instructions
// per key against 2.7 for popcount32's shifts and masks.
FASTATTN_AVX2 inline void narrow_scores_avx2(uint32_t query, const uint32_t* key_words, int64_t keys,
                                             uint32_t in_code, int n_bits, Score* scores) {
  const __m256i queries = _mm256_set1_epi32(static_cast<int32_t>(query));
  const __m256i mask = _mm256_set1_epi32(static_cast<int32_t>(in_code));
  const __m256i bits = _mm256_set1_epi16(static_cast<int16_t>(n_bits));
  int64_t j = 0;
  for (; j + 16 <= keys; j += 16) {
    // hadd interleaves its two inputs by 128-bit lane: keys 0-3, 8-11, 4-7, 12-15.
    const __m256i counts = _mm256_permute4x64_epi64(
        _mm256_hadd_epi16(half_word_popcounts(key_words + j, queries, mask),
                          half_word_popcounts(key_words + j + 8, queries, mask)),
        0xd8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(scores + j), _mm256_sub_epi16(bits, counts));
  }
  narrow_scores_scalar(query, key_words, j, keys, in_code, n_bits, scores);
}
#endif

// wide_scores for codes of at most 32 bits (the modules' default), from the low words of
// the key codes.
[[gnu::always_inline]] inline void narrow_scores(int64_t query_code, const uint32_t* key_words, const bool* padding,
                                                 int64_t keys, int n_bits, Score* scores) {
  const uint32_t in_code = static_cast<uint32_t>(lsh::word_mask(0, n_bits));
  const uint32_t query = static_cast<uint32_t>(query_code);
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) {
    narrow_scores_avx2(query, key_words, keys, in_code, n_bits, scores);
  } else {
    narrow_scores_scalar(query, key_words, 0, keys, in_code, n_bits, scores);
  }
#else
  narrow_scores_scalar(query, key_words, 0, keys, in_code, n_bits, scores);
#endif
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

// 16 scores in a GCC vector (one AVX2 register, two SSE ones). The threshold search counts
// in such lanes: a comparison (-1 where true) subtracted from a tally per score level.
typedef Score Lanes __attribute__((vector_size(32)));
typedef uint16_t LaneCounts __attribute__((vector_size(32)));
typedef int16_t Order __attribute__((vector_size(32)));
constexpr int kLanes = sizeof(Lanes) / sizeof(Score);
// Steps before the tallies go into the counts: each lane then holds at most 4095, so the
// sum of a tally's 16 lanes fits in a uint16 lane.
constexpr int64_t kStepsPerFlush = 4095;

// The sum of a tally's lanes, by halving shuffles.
[[gnu::always_inline]] inline int64_t lane_sum(Lanes tally) {
  LaneCounts sum = reinterpret_cast<LaneCounts>(tally);
  sum += __builtin_shuffle(sum, Order{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  sum += __builtin_shuffle(sum, Order{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  sum += __builtin_shuffle(sum, Order{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  sum += __builtin_shuffle(sum, Order{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return sum[0];
}

// Score levels the first pass of the threshold search counts at once: the threshold of
// a row is within two of the last row's in about 98% of the rows of an LSH layer
// (sign_alsh, 32 bits, L = 64 of 500 keys: the same 33% of the time, one off 50%), and
// [guess - 2, guess + 3] leaves one more level above to show where the threshold ends.
constexpr int kWindow = 6;

// at_least[w] = how many keys score at least low + w, for w < kLevels; returns the best
// score (-1 if every key is padded). One pass: per 16 keys a load, a maximum, and a
// comparison and a subtraction per level.
template <int kLevels>
[[gnu::always_inline]] inline Score count_levels(const Score* scores, int64_t keys, int low, int64_t* at_least) {
  std::fill(at_least, at_least + kLevels, 0);
  Lanes best_lanes = Lanes{} - 1;
  int64_t j = 0;
  while (j + kLanes <= keys) {
    Lanes tally[kLevels];
    for (int w = 0; w < kLevels; ++w) tally[w] = Lanes{};  // (an array's "= {}" became a rep stos)
    for (int64_t step = 0; step < kStepsPerFlush && j + kLanes <= keys; ++step, j += kLanes) {
      Lanes lanes;
      std::memcpy(&lanes, scores + j, sizeof(lanes));
      best_lanes = lanes > best_lanes ? lanes : best_lanes;
#pragma GCC unroll 8
      for (int w = 0; w < kLevels; ++w) tally[w] -= lanes >= static_cast<Score>(low + w);
    }
    for (int w = 0; w < kLevels; ++w) at_least[w] += lane_sum(tally[w]);
  }
  Score best = -1;
  for (int l = 0; l < kLanes; ++l) best = std::max(best, best_lanes[l]);
  for (; j < keys; ++j) {
    best = std::max(best, scores[j]);
    for (int w = 0; w < kLevels; ++w) at_least[w] += scores[j] >= low + w;
  }
  return best;
}

// The lowest score still (partly) taken among the L best (L >= 1): the highest t that at
// least L keys reach, or 0 when fewer than L keys are valid (all of them are taken).
// `guess` is the last row's threshold: one count_levels pass around it settles most rows;
// the others bisect the rest of the range by single counts. Returns -1 (and sets *best to
// -1) when every key is padded.
[[gnu::always_inline]] inline int find_threshold(const Score* scores, int64_t keys, int64_t L, int guess,
                                                 Score* best) {
  const int low = std::max(guess - 2, 0);
  int64_t at_least[kWindow];
  *best = count_levels<kWindow>(scores, keys, low, at_least);
  if (*best < 0) return -1;
  int reached_levels = 0;  // at_least does not increase with the level
  while (reached_levels < kWindow && at_least[reached_levels] >= L) ++reached_levels;
  int reached, missed;  // the threshold lies in [reached, missed)
  if (reached_levels == 0) {
    if (low == 0) return 0;
    reached = 0, missed = low;
  } else if (reached_levels < kWindow) {
    return low + reached_levels - 1;
  } else {
    reached = low + kWindow - 1, missed = *best + 1;
  }
  while (missed - reached > 1) {
    const int middle = reached + (missed - reached) / 2;
    int64_t at_middle;
    count_levels<1>(scores, keys, middle, &at_middle);
    (at_middle >= L ? reached : missed) = middle;
  }
  return reached;
}

// scores rearranged into query i's tie-break order i, i-1, i+1, i-2, i+2, ...: ordered[d]
// is the score of the d-th key of the row in that order, d < keys (unlike
// lsh::key_in_distance_order, no holes past the shorter side: that side's steps are
// skipped). Pairs of steps sixteen keys at a time, one side reversed and the two
// interleaved by vector shuffles; then the rest of the longer side.
[[gnu::always_inline]] inline void order_by_distance(const Score* scores, int64_t keys, int64_t i, Score* ordered) {
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

// Places the candidates (the positions d in tie-break order whose key scores at least
// `threshold`, increasing) best score first by a counting sort, which keeps their order
// within a score: each lands in its score's next free slot of placed. The keys at the
// threshold come last, so all of them are placed and the caller keeps the first L
// entries: no test of the room left per key. Stores positions, not keys; the keys follow
// in a vector pass.
//
// The one dependency between iterations is a score's next free slot, a load of what the
// last iteration stored when two candidates in a row share a score (most do): about nine
// cycles each. So the candidates go in kPlacementChains consecutive runs, each with its
// own counts and free slots (chain c's slots of a score after those of chains before it,
// which keeps the order), and one loop advances all runs together: independent chains
// of stores and loads that overlap. noinline: scalar code, the same in every copy.
[[gnu::noinline]] inline void place_by_score(const Score* ordered, const int32_t* candidates, int64_t count,
                                             int best, int threshold, int32_t* next, int32_t* placed) {
  constexpr int kChains = kPlacementChains;
  const int64_t run = count / kChains;  // the last run also takes the count % kChains left over
  const int stride = best + 1;         // next holds chain c's entry for score s at c * stride + s
  for (int c = 0; c < kChains; ++c) std::fill(next + c * stride + threshold, next + c * stride + best + 1, 0);
  for (int64_t n = 0; n < run; ++n) {
    for (int c = 0; c < kChains; ++c) ++next[c * stride + ordered[candidates[c * run + n]]];
  }
  for (int64_t n = kChains * run; n < count; ++n) ++next[(kChains - 1) * stride + ordered[candidates[n]]];
  int32_t free_slot = 0;
  for (int score = best; score >= threshold; --score) {
    for (int c = 0; c < kChains; ++c) {
      const int32_t of_score = next[c * stride + score];
      next[c * stride + score] = free_slot;
      free_slot += of_score;
    }
  }
  for (int64_t n = 0; n < run; ++n) {
    for (int c = 0; c < kChains; ++c) {
      const int32_t d = candidates[c * run + n];
      placed[next[c * stride + ordered[d]]++] = d;
    }
  }
  for (int64_t n = kChains * run; n < count; ++n) {
    const int32_t d = candidates[n];
    placed[next[(kChains - 1) * stride + ordered[d]]++] = d;
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
  int64_t taken = 0;
  Score best;
  const int threshold = L > 0 ? find_threshold(ordered, keys, L, scratch.threshold, &best) : -1;
  if (threshold >= 0) {
    scratch.threshold = threshold;
    int32_t* candidates = scratch.candidates.data();
    const int64_t count = collect_at_least(ordered, keys, threshold, candidates);
    int32_t* placed = scratch.placed.data();
    place_by_score(ordered, candidates, count, best, threshold, scratch.next.data(), placed);
    taken = std::min(count, L);
    keys_at_positions(placed, taken, keys, i, out);
  }
  std::fill(out + taken, out + L, -1);
}

}  // namespace fastattn::cpu::hamming
