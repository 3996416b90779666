#pragma once

// The CUDA kernels of the LSH ops; launches live in lsh.cu. One warp per row throughout:
//
//   sq_norm_kernel:       ||x||^2 of every row, the values both the transform of each row
//                         and the maxima M^2, Mq^2 are taken from (mips_math.h says why).
//   transform_kernel:     x -> [scale x; extras] (mips_math.h), or, fused with the
//                         projections, straight to packed sign bits (never writing the
//                         transformed vector).
//   hamming_topk_kernel:  a histogram of the scores (0 .. n_bits) in shared memory finds
//                         the L-th best score; one walk in distance order places the keys,
//                         so the tie-break of lsh_select.h needs no sort and no (T, T) matrix.
//                         Both passes read every key code: a block copies its (batch,
//                         head)'s codes to shared memory once for its rows when they fit.
//   bucket_topk_kernel:   the keys whose code equals the query's, merged chunk by chunk
//                         into a sorted buffer of the best L (by q . k, then distance, then j).

#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "fastattn/lsh_select.h"
#include "fastattn/mips_math.h"

namespace fastattn::cuda::lsh_kernels {

constexpr int kWarps = 4;  // rows per block
constexpr int kMaxL = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct TransformParams {
  int64_t rows, heads, length, dim;  // rows = B H T
  mips::Scheme scheme;
  mips::Role role;
  int m, extra;
  float U;
  const bool* key_padding;    // (B, T) or nullptr
  const float* sq_norms;      // (B, H, T), from sq_norm_kernel
  const float* key_max_sq;    // (B, H)
  const float* query_max_sq;  // (B, H)
};

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

// out[row] = ||x_row||^2 of `rows` rows of `dim` values, in float.
template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    sq_norm_kernel(const scalar_t* x, int64_t rows, int64_t dim, float* out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (index >= rows) return;  // whole warps leave together, so the shuffles stay full
  const int lane = threadIdx.x % 32;
  float sq = 0.f;
  for (int64_t d = lane; d < dim; d += 32) {
    const float value = static_cast<float>(x[index * dim + d]);
    sq += value * value;
  }
  sq = warp_sum(sq);
  if (lane == 0) out[index] = sq;
}

// The scale and extras of one row (every lane gets the same values); false for a padded row.
__device__ __forceinline__ bool row_coefficients(const TransformParams& p, int64_t index, float& scale, float* extra) {
  const int64_t bh = index / p.length, b = bh / p.heads, t = index % p.length;
  if (p.key_padding && p.key_padding[b * p.length + t]) return false;
  scale = mips::transform_coefficients<float>(p.scheme, p.role, p.sq_norms[index], p.key_max_sq[bh],
                                              p.query_max_sq[bh], p.U, p.m, extra);
  return true;
}

template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    transform_kernel(TransformParams p, const scalar_t* x, scalar_t* out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (index >= p.rows) return;
  const int lane = threadIdx.x % 32;
  const int64_t width = p.dim + p.extra;
  const scalar_t* row = x + index * p.dim;
  scalar_t* dst = out + index * width;
  float scale = 0.f, extra[mips::kMaxExtra] = {};
  const bool present = row_coefficients(p, index, scale, extra);  // padded rows are all zeros
  for (int64_t d = lane; d < p.dim; d += 32) {
    dst[d] = static_cast<scalar_t>(present ? scale * static_cast<float>(row[d]) : 0.f);
  }
  for (int r = lane; r < p.extra; r += 32) dst[p.dim + r] = static_cast<scalar_t>(present ? extra[r] : 0.f);
}

// Bit i of row's code: (projections[i] . transformed) > 0. Lane l computes bits l, l + 32,
// ...; each group of 32 bits is one ballot. The row's x waits in shared memory.
template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    hash_kernel(TransformParams p, const scalar_t* x, const float* projections, int n_bits, int64_t* codes,
                int max_dim) {
  extern __shared__ float row_cache[];  // kWarps x max_dim
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (index >= p.rows) return;
  const int words = (n_bits + 63) / 64;
  const scalar_t* row = x + index * p.dim;
  float* cached = row_cache + warp * max_dim;
  for (int64_t d = lane; d < p.dim; d += 32) cached[d] = static_cast<float>(row[d]);
  __syncwarp();
  float scale = 0.f, extra[mips::kMaxExtra] = {};
  const bool present = row_coefficients(p, index, scale, extra);
  const int64_t width = p.dim + p.extra;
  uint32_t ballots[lsh::kMaxBits / 32];
  for (int group = 0; group < (n_bits + 31) / 32; ++group) {
    const int bit = group * 32 + lane;
    float value = 0.f;
    if (present && bit < n_bits) {
      const float* projection = projections + bit * width;
      float dot = 0.f;
      for (int64_t d = 0; d < p.dim; ++d) dot = fmaf(projection[d], cached[d], dot);
      value = scale * dot;
      for (int r = 0; r < p.extra; ++r) value = fmaf(projection[p.dim + r], extra[r], value);
    }
    ballots[group] = __ballot_sync(kFullMask, value > 0.f);
  }
  if (lane < words) {
    const uint64_t low = ballots[2 * lane];
    const uint64_t high = 2 * lane + 1 < (n_bits + 31) / 32 ? ballots[2 * lane + 1] : 0u;
    codes[index * words + lane] = static_cast<int64_t>(low | (high << 32));
  }
}

struct TopkParams {
  int64_t rows, heads, queries, keys;  // rows = B H Tq
  int words, n_bits, L;
  const int64_t* q_codes;   // (B, H, Tq, W)
  const int64_t* k_codes;   // (B, H, Tk, W)
  const bool* key_padding;  // (B, Tk) or nullptr
  int32_t* out;             // (B, H, Tq, L)
  bool stage_keys;          // hamming_topk_kernel: a (batch, head)'s codes fit kMaxStagedCodeBytes
};

// The most shared memory hamming_topk_kernel takes for staged key codes: within the 48 KiB
// a block gets without opting in, beside its histograms, and small enough that several
// blocks share a multiprocessor (T = 5120 keys of one 64-bit word).
constexpr int64_t kMaxStagedCodeBytes = 40 << 10;

// Score of key j for the query whose code is in registers, against one (batch, head)'s key
// codes `codes` (global or shared memory); -1 when j is padded or absent.
__device__ __forceinline__ int hamming_score(const TopkParams& p, const int64_t* query_code, const int64_t* codes,
                                             int64_t b, int64_t j) {
  if (j < 0 || j >= p.keys || (p.key_padding && p.key_padding[b * p.keys + j])) return -1;
  return lsh::equal_bits(query_code, codes + j * p.words, p.words, p.n_bits);
}

// Copies the key codes of the block's (batch, head) to `staged` when the host made room
// (p.stage_keys) and every row of the block has that (batch, head); returns whether it
// did. The same answer for every thread of the block, so all of them reach the barrier.
__device__ __forceinline__ bool stage_key_codes(const TopkParams& p, int64_t* staged) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kWarps;
  const int64_t last = min(first + kWarps, p.rows) - 1;
  const int64_t bh = first / p.queries;
  if (!p.stage_keys || last / p.queries != bh) return false;
  const int64_t* codes = p.k_codes + bh * p.keys * p.words;
  for (int64_t e = threadIdx.x; e < p.keys * p.words; e += blockDim.x) staged[e] = codes[e];
  __syncthreads();
  return true;
}

__device__ __forceinline__ unsigned lanes_below() { return (1u << (threadIdx.x % 32)) - 1u; }

__global__ void __launch_bounds__(kWarps * 32) hamming_topk_kernel(TopkParams p) {
  __shared__ int shared_next[kWarps][lsh::kMaxBits + 1];  // histogram, then next free slot per score
  __shared__ int shared_threshold[kWarps][3];             // threshold score, room at it, slots taken
  extern __shared__ int64_t staged_codes[];               // (Tk, W) when p.stage_keys
  const bool staged = stage_key_codes(p, staged_codes);   // before any thread leaves
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= p.rows) return;
  const int64_t bh = row / p.queries, b = bh / p.heads, i = row % p.queries;
  const int64_t* codes = staged ? staged_codes : p.k_codes + bh * p.keys * p.words;
  int* next = shared_next[warp];
  int64_t query_code[lsh::kMaxWords];
  for (int w = 0; w < p.words; ++w) query_code[w] = p.q_codes[row * p.words + w];

  for (int s = lane; s <= p.n_bits; s += 32) next[s] = 0;
  __syncwarp();
  for (int64_t j = lane; j < p.keys; j += 32) {
    const int score = hamming_score(p, query_code, codes, b, j);
    if (score >= 0) atomicAdd(&next[score], 1);
  }
  __syncwarp();
  if (lane == 0) {  // 257 steps at most: cheaper than any parallel scan here
    int threshold = 0, above = 0;
    for (int s = p.n_bits; s > 0; --s) {
      if (above + next[s] >= p.L) {
        threshold = s;
        break;
      }
      above += next[s];
    }
    int position = 0;
    for (int s = p.n_bits; s >= threshold; --s) {
      const int count = s > threshold ? next[s] : min(next[s], p.L - above);
      next[s] = position;
      position += count;
    }
    shared_threshold[warp][0] = threshold;
    shared_threshold[warp][1] = position - above;
    shared_threshold[warp][2] = position;
  }
  __syncwarp();
  const int threshold = shared_threshold[warp][0];
  int room = shared_threshold[warp][1];
  int32_t* dst = p.out + row * p.L;
  const int64_t steps = lsh::distance_order_length(i, p.keys);
  for (int64_t base = 0; base < steps; base += 32) {
    const int64_t d = base + lane;
    const int score = d < steps ? hamming_score(p, query_code, codes, b, lsh::key_in_distance_order(i, d, p.keys)) : -1;
    const unsigned at_threshold = __ballot_sync(kFullMask, score == threshold);
    const int rank_at_threshold = __popc(at_threshold & lanes_below());
    const bool taken = score > threshold || (score == threshold && rank_at_threshold < room);
    const unsigned same = __match_any_sync(kFullMask, taken ? score : -1);
    const int slot = taken ? next[score] + __popc(same & lanes_below()) : -1;
    __syncwarp();
    if (taken && (same & lanes_below()) == 0) next[score] += __popc(same);  // the group's first lane
    if (taken) dst[slot] = static_cast<int32_t>(lsh::key_in_distance_order(i, d, p.keys));
    room = max(0, room - __popc(at_threshold));
    __syncwarp();
  }
  for (int slot = shared_threshold[warp][2] + lane; slot < p.L; slot += 32) dst[slot] = -1;
}

struct BucketParams {
  TopkParams topk;
  int64_t dim;
  const float* q;  // (B, H, Tq, D) float
  const float* k;  // (B, H, Tk, D) float
};

__global__ void __launch_bounds__(kWarps * 32) bucket_topk_kernel(BucketParams bp) {
  __shared__ float buffer_score[kWarps][2][kMaxL];
  __shared__ int buffer_key[kWarps][2][kMaxL];
  const TopkParams& p = bp.topk;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= p.rows) return;
  const int64_t bh = row / p.queries, b = bh / p.heads, i = row % p.queries;
  int64_t query_code[lsh::kMaxWords];
  for (int w = 0; w < p.words; ++w) query_code[w] = p.q_codes[row * p.words + w];
  const float* q = bp.q + row * bp.dim;
  int current = 0, count = 0;  // buffer[current][0 .. count) is sorted, best first

  for (int64_t base = 0; base < p.keys; base += 32) {
    const int64_t j = base + lane;
    const bool candidate = hamming_score(p, query_code, p.k_codes + bh * p.keys * p.words, b, j) == p.n_bits;
    const unsigned candidates = __ballot_sync(kFullMask, candidate);
    if (candidates == 0) continue;
    const float dot = candidate ? lsh::bucket_dot(q, bp.k + (bh * p.keys + j) * bp.dim, bp.dim) : 0.f;
    // Merge: the new position of an entry is the number of entries of both lists before it.
    int chunk_rank = 0;                 // chunk entries before mine
    int buffer_rank = 0;                // buffer entries before mine
    int shift[kMaxL / 32] = {};         // per buffer entry I own: chunk entries before it
    for (int source = 0; source < 32; ++source) {
      const float other_dot = __shfl_sync(kFullMask, dot, source);
      const int64_t other_j = base + source;
      if (!((candidates >> source) & 1u)) continue;
      if (candidate && lsh::ranks_before(other_dot, other_j, dot, j, i)) ++chunk_rank;
      for (int t = 0; t * 32 + lane < count; ++t) {
        const int e = t * 32 + lane;
        if (lsh::ranks_before(other_dot, other_j, buffer_score[warp][current][e],
                              static_cast<int64_t>(buffer_key[warp][current][e]), i)) {
          ++shift[t];
        }
      }
    }
    if (candidate) {
      for (int e = 0; e < count; ++e) {
        if (lsh::ranks_before(buffer_score[warp][current][e], static_cast<int64_t>(buffer_key[warp][current][e]),
                              dot, j, i)) {
          ++buffer_rank;
        }
      }
    }
    const int next = 1 - current;
    for (int t = 0; t * 32 + lane < count; ++t) {
      const int e = t * 32 + lane, position = e + shift[t];
      if (position < p.L) {
        buffer_score[warp][next][position] = buffer_score[warp][current][e];
        buffer_key[warp][next][position] = buffer_key[warp][current][e];
      }
    }
    if (candidate && chunk_rank + buffer_rank < p.L) {
      buffer_score[warp][next][chunk_rank + buffer_rank] = dot;
      buffer_key[warp][next][chunk_rank + buffer_rank] = static_cast<int>(j);
    }
    count = min(p.L, count + __popc(candidates));
    current = next;
    __syncwarp();
  }
  int32_t* dst = p.out + row * p.L;
  for (int slot = lane; slot < p.L; slot += 32) dst[slot] = slot < count ? buffer_key[warp][current][slot] : -1;
}

}  // namespace fastattn::cuda::lsh_kernels
