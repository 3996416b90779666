// The LSH ops on the CPU: mips_transform, alsh_hash and topk_keys (SPEC sections 1 to 3).
// Per-vector transforms come from mips_math.h, per-pair scores and the tie-break from
// lsh_select.h; hamming selection (hamming_select.h) is linear in the number of keys (a
// histogram of the small integer scores), never a sort of a (T, T) score matrix.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastattn/lsh_host.h"
#include "fastattn/lsh_select.h"
#include "fastattn/mips_math.h"
#include "fastattn/outputs.h"
#include "hamming_select.h"
#include "instruction_sets.h"

namespace fastattn {
namespace {

constexpr int64_t kRowsPerTask = 64;
// alsh_hash projects a row on this many projections at once, in registers.
constexpr int kBitsPerChunk = 32;

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
  const int64_t dims = transformed.size(3), rows = transformed.numel() / std::max<int64_t>(dims, 1);
  // (dims, whole chunks of bits), zero past n_bits: a chunk's projections of a row are sums
  // of rows of it scaled by the row's values, held in registers. At B = 8, H = 12, T = 500,
  // dims = 17, n_bits = 32 a matmul of (rows, dims) by (dims, n_bits) took 1.1 to 1.9 ms,
  // far below peak at so short an inner dimension; the whole op went from 1.55-1.8 ms to
  // 1.1 ms with this loop.
  const int64_t chunks = (n_bits + kBitsPerChunk - 1) / kBitsPerChunk;
  const at::Tensor by_dim =
      at::constant_pad_nd(projections.to(transformed.scalar_type()).t(), {0, chunks * kBitsPerChunk - n_bits}).contiguous();
  at::Tensor codes = new_output({x.size(0), x.size(1), x.size(2), words}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(transformed.scalar_type(), "alsh_hash_cpu", [&] {
    const scalar_t* xs = transformed.data_ptr<scalar_t>();
    const scalar_t* p = by_dim.data_ptr<scalar_t>();
    int64_t* out = codes.data_ptr<int64_t>();
    cpu::parallel_blocks(rows, kRowsPerTask, [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
      for (int64_t row = begin; row < end; ++row) {
        uint64_t* code = reinterpret_cast<uint64_t*>(out + row * words);
        std::fill(code, code + words, 0);
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          // Starts from the first dimension (every scheme appends at least one, so there is
          // one): zeroing the array first became a rep stos, an eighth of the loop.
          const scalar_t* p_chunk = p + chunk * kBitsPerChunk;
          scalar_t values[kBitsPerChunk];
          for (int b = 0; b < kBitsPerChunk; ++b) values[b] = xs[row * dims] * p_chunk[b];
          for (int64_t d = 1; d < dims; ++d) {
            const scalar_t x_d = xs[row * dims + d];
            const scalar_t* p_d = p_chunk + d * chunks * kBitsPerChunk;
            for (int b = 0; b < kBitsPerChunk; ++b) values[b] += x_d * p_d[b];
          }
          // Padded rows are all zero, so every projection is 0 and every bit 0, as the SPEC
          // asks; so are the columns past n_bits.
          uint32_t bits = 0;
          for (int b = 0; b < kBitsPerChunk; ++b) bits |= uint32_t(values[b] > 0) << b;
          code[chunk * kBitsPerChunk / 64] |= uint64_t(bits) << (chunk * kBitsPerChunk % 64);
        }
      }
    });
  });
  return codes;
}

// topk_keys in hamming mode: rows of queries, each against every key of its (batch, head);
// score_row(row, scores) writes a row's scores (always_inline, like the block around it).
template <class ScoreRow>
void hamming_topk(int64_t rows, int64_t Tq, int64_t Tk, int n_bits, int64_t L, int32_t* out,
                  const ScoreRow& score_row) {
  cpu::parallel_blocks<cpu::Widest::kAvx512Popcount>(rows, kRowsPerTask, [&](int64_t begin, int64_t end)
                                                                            FASTATTN_INLINE_BLOCK {
    cpu::hamming::Scratch scratch(Tk, n_bits);
    for (int64_t row = begin; row < end; ++row) {
      score_row(row, scratch.scores.data());
      cpu::hamming::select_row(scratch.scores.data(), Tk, row % Tq, L, out + row * L, scratch);
    }
  });
}

// The low 32 bits of every code of contiguous (B, H, T, W) codes, as (B, H, T) int32.
at::Tensor low_code_words(const at::Tensor& codes) {
  at::Tensor low = new_output({codes.size(0), codes.size(1), codes.size(2)}, codes.options().dtype(at::kInt));
  const int64_t words = codes.size(3);
  const int64_t* src = codes.data_ptr<int64_t>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(low.data_ptr<int32_t>());
  at::parallel_for(0, low.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) dst[r] = static_cast<uint32_t>(src[r * words]);
  });
  return low;
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
    const auto key_padding = [&](int64_t row) FASTATTN_INLINE_BLOCK {
      return padding ? padding + row / Tq / H * Tk : nullptr;
    };
    // Codes of at most 32 bits (the modules' default) take 32-bit words, eight keys per AVX2
    // vector, unless the CPU counts bits in vectors (VPOPCNTDQ), which the wide path uses.
    if (n_bits <= 32 && !cpu::cpu_has_avx512_popcount()) {
      const at::Tensor key_words = low_code_words(k_codes);  // once: every query of a (batch, head) reads them
      const uint32_t* kw = reinterpret_cast<const uint32_t*>(key_words.data_ptr<int32_t>());
      hamming_topk(B * H * Tq, Tq, Tk, n_bits, L, result, [&](int64_t row, cpu::hamming::Score* scores)
                                                              FASTATTN_INLINE_BLOCK {
        cpu::hamming::narrow_scores(qc[row * words], kw + row / Tq * Tk, key_padding(row), Tk, n_bits, scores);
      });
      return out;
    }
    const auto wide = [&](auto fixed_words) {
      constexpr int kWords = decltype(fixed_words)::value;
      hamming_topk(B * H * Tq, Tq, Tk, n_bits, L, result, [&](int64_t row, cpu::hamming::Score* scores)
                                                              FASTATTN_INLINE_BLOCK {
        cpu::hamming::wide_scores<kWords>(qc + row * words, kc + row / Tq * Tk * words, key_padding(row), Tk, words,
                                          n_bits, scores);
      });
    };
    switch (words) {  // the common widths fixed at compile time (0: any)
      case 1: wide(std::integral_constant<int, 1>{}); break;
      case 2: wide(std::integral_constant<int, 2>{}); break;
      default: wide(std::integral_constant<int, 0>{}); break;
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
