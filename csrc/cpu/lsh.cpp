// The LSH ops on the CPU: mips_transform, alsh_hash and topk_keys (SPEC sections 1 to 3).
// Per-vector transforms come from mips_math.h, per-pair scores and the tie-break from
// lsh_select.h; selection is linear in the number of keys (a histogram of the small
// integer scores), never a sort of a (T, T) score matrix.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "fastattn/lsh_host.h"
#include "fastattn/lsh_select.h"
#include "fastattn/mips_math.h"
#include "fastattn/outputs.h"
#include "instruction_sets.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 64;

at::ScalarType accumulate_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_cpu_float(const at::Tensor& x, const char* name) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
                   " on the CPU must be float32 or float64, got ", x.scalar_type());
}

// ||x_row||^2 of every row of a (B, H, T, D) tensor as (B, H, T) in the accumulation
// dtype, summed in order of d: the values the transform of each row uses, and the ones its
// maxima M^2 and Mq^2 are taken over (mips_math.h).
at::Tensor row_sq_norms(const at::Tensor& x_in) {
  const at::Tensor x = x_in.to(accumulate_type(x_in)).contiguous();
  const int64_t D = x.size(3);
  at::Tensor sq_norms = new_output({x.size(0), x.size(1), x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_sq_norms_cpu", [&] {
    const scalar_t* xs = x.data_ptr<scalar_t>();
    scalar_t* out = sq_norms.data_ptr<scalar_t>();
    at::parallel_for(0, sq_norms.numel(), kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        scalar_t sum = 0;
        for (int64_t d = 0; d < D; ++d) sum += xs[row * D + d] * xs[row * D + d];
        out[row] = sum;
      }
    });
  });
  return sq_norms;
}

lsh_host::TransformSetup transform_setup(const at::Tensor& x, c10::string_view scheme, c10::string_view role,
                                         const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& keys,
                                         int64_t m, double U) {
  check_cpu_float(x, "x");
  return lsh_host::transform_setup(x, std::string(scheme), std::string(role), mask, keys, m, U, accumulate_type(x),
                                   row_sq_norms);
}

// The transformed rows in the accumulation dtype, zero on padded positions.
at::Tensor transform_rows(const at::Tensor& x_in, const lsh_host::TransformSetup& setup,
                          const std::optional<at::Tensor>& mask_in) {
  const at::ScalarType acc = accumulate_type(x_in);
  const at::Tensor x = x_in.to(acc).contiguous();
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
  const int e = mips::extra_dims(setup.scheme, setup.m);
  at::Tensor out = new_output({B, H, T, D + e}, x.options());
  const std::optional<at::Tensor> mask = mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES(acc, "mips_transform_cpu", [&] {
    const scalar_t* xs = x.data_ptr<scalar_t>();
    scalar_t* os = out.data_ptr<scalar_t>();
    const scalar_t* sq_norms = setup.sq_norms.data_ptr<scalar_t>();
    const scalar_t* key_max_sq = setup.key_max_sq.data_ptr<scalar_t>();
    const scalar_t* query_max_sq = setup.query_max_sq.data_ptr<scalar_t>();
    const bool* padding = mask ? mask->data_ptr<bool>() : nullptr;
    at::parallel_for(0, B * H * T, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bh = row / T, b = bh / H, t = row % T;
        const scalar_t* in = xs + row * D;
        scalar_t* dst = os + row * (D + e);
        if (padding && padding[b * T + t]) {
          std::fill(dst, dst + D + e, scalar_t(0));
          continue;
        }
        scalar_t extra[mips::kMaxExtra];
        const scalar_t scale = mips::transform_coefficients<scalar_t>(
            setup.scheme, setup.role, sq_norms[row], key_max_sq[bh], query_max_sq[bh],
            static_cast<scalar_t>(setup.U), setup.m, extra);
        for (int64_t d = 0; d < D; ++d) dst[d] = scale * in[d];
        for (int r = 0; r < e; ++r) dst[D + r] = extra[r];
      }
    });
  });
  return out;
}

// Both wrappers make x contiguous once, as the CUDA ones do: the squared norms and the
// transform would otherwise each copy a strided x (heads split off a projection).
at::Tensor mips_transform_cpu(const at::Tensor& x_in, c10::string_view scheme, c10::string_view role,
                              const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& keys, int64_t m,
                              double U) {
  const at::Tensor x = x_in.contiguous();
  return transform_rows(x, transform_setup(x, scheme, role, mask, keys, m, U), mask).to(x.scalar_type());
}

at::Tensor alsh_hash_cpu(const at::Tensor& x_in, c10::string_view scheme, c10::string_view role,
                         const at::Tensor& projections, const std::optional<at::Tensor>& mask,
                         const std::optional<at::Tensor>& keys, int64_t m, double U) {
  const at::Tensor x = x_in.contiguous();
  const auto setup = transform_setup(x, scheme, role, mask, keys, m, U);
  lsh_host::check_projections(projections, x.size(3) + mips::extra_dims(setup.scheme, setup.m), x);
  const int64_t n_bits = projections.size(0), words = (n_bits + 63) / 64;
  const at::Tensor transformed = transform_rows(x, setup, mask);
  // Padded rows are all zero, so every projection is 0 and every bit 0, as the SPEC asks.
  const at::Tensor values = at::matmul(transformed, projections.to(transformed.scalar_type()).t()).contiguous();
  const int64_t rows = values.numel() / std::max<int64_t>(n_bits, 1);
  at::Tensor codes = new_output({x.size(0), x.size(1), x.size(2), words}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "alsh_hash_cpu", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    int64_t* out = codes.data_ptr<int64_t>();
    at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        for (int64_t w = 0; w < words; ++w) {
          uint64_t word = 0;
          for (int64_t bit = 64 * w; bit < std::min<int64_t>(n_bits, 64 * w + 64); ++bit) {
            word |= uint64_t(v[row * n_bits + bit] > 0) << (bit - 64 * w);
          }
          out[row * words + w] = static_cast<int64_t>(word);
        }
      }
    });
  });
  return codes;
}

// Hamming selection, one query row at a time, in three passes over its keys' scores that
// the compiler vectorises (population counts, a maximum, counts of a few score values) and
// one scalar pass that collects the few keys at or above the threshold; only those are
// then ordered. Every pass reads the row's scores from L1, so each costs about a cycle per
// key or less, against the per-key sort or walk it replaces.
using Score = int16_t;  // 0 .. 256 equal bits, -1 for a padded key

// How many consecutive score values one counting pass tallies.
constexpr int kBinsPerPass = 8;

// Per-task scratch, reused across rows.
struct HammingScratch {
  // collect_at_least may write this many entries past the last candidate
  static constexpr int64_t kCandidateSlack = 16;

  std::vector<Score> scores;
  std::vector<int32_t> candidates;
  std::vector<int64_t> next;  // keys per score, then the next free slot per score

  HammingScratch(int64_t keys, int n_bits)
      : scores(keys), candidates(keys + kCandidateSlack), next(n_bits + 1) {}
};

// The j whose score is at least `threshold`, in increasing order, into candidates; returns
// how many. They are a few percent of the keys, so a scalar loop spends its time on the
// others; with AVX-512 each 32 keys take one comparison and two compressions, no branch.
int64_t collect_at_least_scalar(const Score* scores, int64_t begin, int64_t keys, int threshold,
                                int32_t* candidates) {
  int64_t found = 0;
  for (int64_t j = begin; j < keys; ++j) {
    candidates[found] = static_cast<int32_t>(j);
    found += scores[j] >= threshold;
  }
  return found;
}

#if defined(__x86_64__) && defined(__GNUC__)
FASTATTN_AVX512_POPCOUNT int64_t collect_at_least_avx512(const Score* scores, int64_t keys, int threshold,
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
#endif

int64_t collect_at_least(const Score* scores, int64_t keys, int threshold, int32_t* candidates) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu::cpu_has_avx512_popcount()) return collect_at_least_avx512(scores, keys, threshold, candidates);
#endif
  return collect_at_least_scalar(scores, 0, keys, threshold, candidates);
}

// scores[j]: equal bits of query_code and key j among the first n_bits, -1 where padded.
// kWords > 0 fixes the code width at compile time, so the loop vectorises (eight keys per
// instruction with AVX-512 VPOPCNTDQ).
template <int kWords>
[[gnu::always_inline]] inline void hamming_scores(const int64_t* query_code, const int64_t* key_codes,
                                                  const bool* padding, int64_t keys, int words, int n_bits,
                                                  Score* scores) {
  const int width = kWords > 0 ? kWords : words;
  for (int64_t j = 0; j < keys; ++j) {
    scores[j] = static_cast<Score>(lsh::equal_bits(query_code, key_codes + j * width, width, n_bits));
  }
  if (padding) {  // -1 where padded, as an OR with 0 or -1: GCC left a select scalar
    const uint8_t* padded = reinterpret_cast<const uint8_t*>(padding);  // a bool is one byte, 0 or 1
#pragma GCC ivdep
    for (int64_t j = 0; j < keys; ++j) scores[j] |= static_cast<Score>(-static_cast<Score>(padded[j]));
  }
}

// The lowest score still (partly) taken among the L best and how many keys score above
// it; next[s] gets the number of keys of each score from the best down to the threshold.
// Counts kBinsPerPass score values per pass, downwards from the best score: the L-th best
// is usually within a few values of the best, so one or two passes find it.
struct Threshold {
  int score;
  int64_t above;
};

#if defined(__x86_64__) && defined(__GNUC__)
// counts[b] += the keys scoring top - b, 32 keys per step: a comparison into a mask and a
// masked addition per bin on int16 lanes, where the portable loop takes int32 lanes and
// three instructions per bin. The int16 tallies go into counts before they could overflow.
FASTATTN_AVX512_POPCOUNT void count_top_bins_avx512(const Score* scores, int64_t keys, int top, int32_t* counts) {
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

// counts[b] = the keys scoring top - b, for b < kBinsPerPass.
[[gnu::always_inline]] inline void count_top_bins(const Score* scores, int64_t keys, int top, int32_t* counts) {
  std::fill(counts, counts + kBinsPerPass, 0);
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu::cpu_has_avx512_popcount()) return count_top_bins_avx512(scores, keys, top, counts);
#endif
  for (int64_t j = 0; j < keys; ++j) {
    const int below_top = top - scores[j];
    for (int b = 0; b < kBinsPerPass; ++b) counts[b] += below_top == b;
  }
}

[[gnu::always_inline]] inline Threshold find_threshold(const Score* scores, int64_t keys, int64_t L, int best,
                                                       int64_t* next) {
  int64_t above = 0;
  for (int top = best; top >= 0; top -= kBinsPerPass) {
    int32_t counts[kBinsPerPass];
    count_top_bins(scores, keys, top, counts);
    for (int b = 0; b < kBinsPerPass && top - b >= 0; ++b) {
      const int score = top - b;
      next[score] = counts[b];
      // Score 0 is the floor: keys scoring 0 fill whatever room is left.
      if (above + counts[b] >= L || score == 0) return {score, above};
      above += counts[b];
    }
  }
  return {0, above};
}

// Writes the L best keys of query i (SPEC section 3), best first, -1 after the last: the
// keys scoring above the threshold, and as many keys at the threshold as fit, nearest to
// i first. The candidates, collected in index order, are visited in distance order by
// walking outwards from i, which is the tie-break order: i, i-1, i+1, i-2, ...
[[gnu::always_inline]] inline void select_by_small_scores(const Score* scores, int64_t keys, int64_t i, int64_t L,
                                                          int32_t* out, HammingScratch& scratch) {
  Score best = -1;
  for (int64_t j = 0; j < keys; ++j) best = std::max(best, scores[j]);
  int64_t taken = 0;
  if (best >= 0) {
    int64_t* next = scratch.next.data();
    const auto [threshold, above] = find_threshold(scores, keys, L, best, next);
    for (int score = best; score >= threshold; --score) {  // next[s]: where the next key of score s goes
      const int64_t count = score > threshold ? next[score] : std::min<int64_t>(next[score], L - above);
      next[score] = taken;
      taken += count;
    }
    int32_t* candidates = scratch.candidates.data();
    const int64_t found = collect_at_least(scores, keys, threshold, candidates);
    // Which side comes next and whether a key at the threshold still fits are data-dependent
    // coin flips: selects instead of branches, and a write to `discarded` for a key that
    // does not fit. The clamps keep both reads in bounds; candidates has slack past `found`.
    int64_t right = std::lower_bound(candidates, candidates + found, i) - candidates, left = right - 1;
    int32_t discarded;
    for (int64_t placed = 0, room = taken - above; placed < taken;) {
      const int32_t nearest_left = candidates[std::max<int64_t>(left, 0)], nearest_right = candidates[right];
      const bool go_left = left >= 0 && (right >= found || i - nearest_left <= nearest_right - i);
      const int32_t j = go_left ? nearest_left : nearest_right;
      left -= go_left;
      right += !go_left;
      const int score = scores[j];
      const bool at_threshold = score == threshold, fits = !at_threshold || room > 0;
      *(fits ? out + next[score] : &discarded) = j;
      next[score] += fits;
      room -= fits && at_threshold;
      placed += fits;
    }
  }
  std::fill(out + taken, out + L, -1);
}

// topk_keys in hamming mode: rows of queries, each against every key of its (batch, head).
template <int kWords>
void hamming_topk(const int64_t* q_codes, const int64_t* k_codes, const bool* padding, int64_t rows, int64_t H,
                  int64_t Tq, int64_t Tk, int words, int n_bits, int64_t L, int32_t* out) {
  cpu::parallel_blocks<cpu::Widest::kAvx512Popcount>(rows, kRowsPerTask, [&](int64_t begin, int64_t end)
                                                                            FASTATTN_INLINE_BLOCK {
    HammingScratch scratch(Tk, n_bits);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / Tq, b = bh / H, i = row % Tq;
      hamming_scores<kWords>(q_codes + row * words, k_codes + bh * Tk * words, padding ? padding + b * Tk : nullptr,
                             Tk, words, n_bits, scratch.scores.data());
      select_by_small_scores(scratch.scores.data(), Tk, i, L, out + row * L, scratch);
    }
  });
}

at::Tensor topk_keys_cpu(const at::Tensor& q_codes_in, const at::Tensor& k_codes_in, int64_t L,
                         const std::optional<at::Tensor>& mask_in, c10::string_view mode_in,
                         const std::optional<at::Tensor>& q_in, const std::optional<at::Tensor>& k_in,
                         std::optional<int64_t> n_bits_in) {
  const std::string mode(mode_in);
  const int n_bits = lsh_host::check_topk_inputs(q_codes_in, k_codes_in, L, mask_in, mode, q_in, k_in, n_bits_in);
  const int64_t B = q_codes_in.size(0), H = q_codes_in.size(1), Tq = q_codes_in.size(2), Tk = k_codes_in.size(2);
  const int words = static_cast<int>(q_codes_in.size(3));
  const bool bucket = mode == "bucket";
  const at::Tensor q_codes = q_codes_in.contiguous(), k_codes = k_codes_in.contiguous();
  const std::optional<at::Tensor> mask = mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  at::Tensor out = new_output({B, H, Tq, L}, q_codes.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  const bool* padding = mask ? mask->data_ptr<bool>() : nullptr;
  int32_t* result = out.data_ptr<int32_t>();
  if (!bucket) {
    const int64_t* qc = q_codes.data_ptr<int64_t>();
    const int64_t* kc = k_codes.data_ptr<int64_t>();
    switch (words) {  // the common widths, fixed at compile time
      case 1: hamming_topk<1>(qc, kc, padding, B * H * Tq, H, Tq, Tk, words, n_bits, L, result); break;
      case 2: hamming_topk<2>(qc, kc, padding, B * H * Tq, H, Tq, Tk, words, n_bits, L, result); break;
      default: hamming_topk<0>(qc, kc, padding, B * H * Tq, H, Tq, Tk, words, n_bits, L, result); break;
    }
    return out;
  }
  const at::ScalarType acc = accumulate_type(*q_in);
  const at::Tensor q = q_in->to(acc).contiguous(), k = k_in->to(acc).contiguous();
  const int64_t D = q.size(3);
  AT_DISPATCH_FLOATING_TYPES(acc, "topk_keys_cpu", [&] {
    const int64_t* qc = q_codes.data_ptr<int64_t>();
    const int64_t* kc = k_codes.data_ptr<int64_t>();
    at::parallel_for(0, B * H * Tq, kRowsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<std::pair<scalar_t, int64_t>> candidates;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bh = row / Tq, b = bh / H, i = row % Tq;
        const int64_t* query_code = qc + row * words;
        int32_t* dst = result + row * L;
        candidates.clear();
        const scalar_t* qi = q.data_ptr<scalar_t>() + row * D;
        for (int64_t j = 0; j < Tk; ++j) {
          if ((padding && padding[b * Tk + j]) ||
              lsh::equal_bits(query_code, kc + (bh * Tk + j) * words, words, n_bits) != n_bits) {
            continue;
          }
          candidates.emplace_back(lsh::bucket_dot(qi, k.data_ptr<scalar_t>() + (bh * Tk + j) * D, D), j);
        }
        const int64_t taken = std::min<int64_t>(L, static_cast<int64_t>(candidates.size()));
        std::partial_sort(candidates.begin(), candidates.begin() + taken, candidates.end(),
                          [i](const auto& a, const auto& b) {
                            return lsh::ranks_before(a.first, a.second, b.first, b.second, i);
                          });
        for (int64_t slot = 0; slot < L; ++slot) {
          dst[slot] = slot < taken ? static_cast<int32_t>(candidates[slot].second) : -1;
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) {
  m.impl("mips_transform", &mips_transform_cpu);
  m.impl("alsh_hash", &alsh_hash_cpu);
  m.impl("topk_keys", &topk_keys_cpu);
}

}  // namespace fastattn
