#pragma once

// The CUDA kernels of sparse_attention; launches live in sparse_attention.cu.
//
// A block owns kWarps neighbouring rows of one (batch, head): query rows in the forward
// and the first backward pass, key rows in the second. One warp per row; lanes split the
// head dimension, so every row is read with coalesced loads, and a row's scores wait in
// shared memory between the two softmax passes of softmax_math.h.
//
// Structured masks list mostly neighbouring keys, which the rows of a block share. When
// the launch reserves room for it (Params::window), a block first counts how many of its
// rows' reads fall within the rows around its own, [first, first + window), of the matrices
// it gathers from; if enough do, it copies that window into shared memory with coalesced
// loads, and a slot inside it then reads shared memory, one outside it global memory as
// before. Random key lists gain nothing from a window, so their blocks skip the copy. The
// decision is the block's own, on the device: no host synchronisation, so the op can be
// captured in a CUDA graph.
//
// Slots outside [0, Tk) count as empty. The host rejects them before launching, except
// under graph capture, where it cannot read the indices; this rule keeps them harmless.

#include <cuda_runtime.h>

#include "fastattn/softmax_math.h"

namespace fastattn::cuda::sparse_kernels {

constexpr int kWarps = 8;  // rows per block
constexpr int kMaxSlots = 512;
constexpr int kMaxDim = 256;
constexpr int kColumnsPerLane = kMaxDim / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// A block stages its window when at least 1 / kWindowShareDenominator of its reads fall in
// it: below that the copy costs more than the reads it saves.
constexpr int kWindowShareDenominator = 4;

struct Params {
  int64_t batch, heads, queries, keys, dim, slots;  // B, H, Tq, Tk, D, L
  int64_t index_batch, index_heads;                 // 1 or B, 1 or H
  float scale;
  const int64_t* indices;  // (index_batch, index_heads, Tq, L)
  int64_t window;          // rows each block stages in shared memory per gathered matrix; 0: none

  __device__ int64_t index_set(int64_t bh) const {
    return (index_batch == 1 ? 0 : bh / heads) * index_heads + (index_heads == 1 ? 0 : bh % heads);
  }
  __device__ const int64_t* slot_list(int64_t bh, int64_t query) const {
    return indices + (index_set(bh) * queries + query) * slots;
  }
  __device__ bool listed(int64_t j) const { return j >= 0 && j < keys; }
};

// Which (batch, head) and which of its rows a block owns, for matrices of `rows` rows.
struct BlockRows {
  int64_t bh, first;

  __device__ explicit BlockRows(int64_t rows) {
    const int64_t tiles = (rows + kWarps - 1) / kWarps;
    bh = blockIdx.x / tiles;
    first = (blockIdx.x % tiles) * kWarps;
  }
};

// Rows of one (batch, head)'s (rows, dim) matrix, the window among them staged in shared
// memory. row(j) points into shared memory inside the window, into global memory outside.
template <class scalar_t>
struct RowSource {
  const scalar_t* global;
  const scalar_t* shared;
  int64_t first, count, dim;

  __device__ const scalar_t* row(int64_t j) const {
    const int64_t w = j - first;
    return (w >= 0 && w < count) ? shared + w * dim : global + j * dim;
  }
};

// The rows [first, first + count) of a `rows`-row matrix that a window of `window` rows
// centred on the block's own rows (block_first .. block_first + kWarps) covers.
struct Span {
  int64_t first, count;

  __device__ Span(int64_t rows, int64_t block_first, int64_t window) {
    count = window < rows ? window : rows;
    first = block_first + kWarps / 2 - count / 2;
    first = first < 0 ? 0 : (first > rows - count ? rows - count : first);
  }
  __device__ bool holds(int64_t row) const { return row >= first && row < first + count; }
};

// Whether the block stages its window, from each thread's count of its share of the
// block's reads (all, and those within the window): one answer for the whole block. Every
// thread of the block must call it, once per kernel. Integer sums: the answer does not
// depend on the order of the atomics.
__device__ bool block_stages_window(int reads, int reads_in_window) {
  __shared__ int totals[2];
  if (threadIdx.x == 0) totals[0] = totals[1] = 0;
  __syncthreads();
  if (reads > 0) atomicAdd(&totals[0], reads);
  if (reads_in_window > 0) atomicAdd(&totals[1], reads_in_window);
  __syncthreads();
  return totals[0] > 0 && kWindowShareDenominator * totals[1] >= totals[0];
}

// Copies `span` of `matrix` into `shared` when `stage` (else the source reads global
// memory only); every thread of the block must call it, and __syncthreads() must follow
// before any row() is read.
template <class scalar_t>
__device__ RowSource<scalar_t> stage_window(const scalar_t* matrix, const Span& span, bool stage, int64_t dim,
                                            scalar_t* shared) {
  const int64_t count = stage ? span.count : 0;
  const scalar_t* source = matrix + span.first * dim;
  for (int64_t e = threadIdx.x; e < count * dim; e += blockDim.x) shared[e] = source[e];
  return {matrix, shared, span.first, count, dim};
}

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

// a . b over D, split across the lanes; every lane gets the sum.
template <class scalar_t>
__device__ __forceinline__ float warp_dot(const float* a_shared, const scalar_t* b, int64_t dim) {
  float partial = 0.f;
  for (int64_t d = threadIdx.x % 32; d < dim; d += 32) partial = fmaf(a_shared[d], static_cast<float>(b[d]), partial);
  return warp_sum(partial);
}

// acc[c] += alpha * x[lane + 32 c], the lane's columns of a row.
template <class scalar_t>
__device__ __forceinline__ void add_scaled_row(float* acc, float alpha, const scalar_t* x, int64_t dim) {
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) {
    const int64_t d = threadIdx.x % 32 + 32 * c;
    if (d < dim) acc[c] = fmaf(alpha, static_cast<float>(x[d]), acc[c]);
  }
}

template <class scalar_t>
__device__ __forceinline__ void store_row(scalar_t* dst, const float* acc, int64_t dim) {
#pragma unroll
  for (int c = 0; c < kColumnsPerLane; ++c) {
    const int64_t d = threadIdx.x % 32 + 32 * c;
    if (d < dim) dst[d] = static_cast<scalar_t>(acc[c]);
  }
}

template <class scalar_t>
__device__ __forceinline__ void cache_row(float* shared, const scalar_t* row, int64_t dim) {
  for (int64_t d = threadIdx.x % 32; d < dim; d += 32) shared[d] = static_cast<float>(row[d]);
  __syncwarp();
}

// Scores of every slot into shared memory and the row's lse.
template <class scalar_t>
__device__ float row_scores(const Params& p, const int64_t* slots, const float* query, const RowSource<scalar_t>& keys,
                            float* scores) {
  float row_max = -math::infinity<float>();
  for (int64_t l = 0; l < p.slots; ++l) {
    const int64_t j = slots[l];
    if (!p.listed(j)) continue;  // uniform across the warp: every lane reads the same slot
    const float score = p.scale * warp_dot(query, keys.row(j), p.dim);
    if (threadIdx.x % 32 == 0) scores[l] = score;
    row_max = math::max_(row_max, score);
  }
  __syncwarp();
  float sum = 0.f;
  for (int64_t l = threadIdx.x % 32; l < p.slots; l += 32) {
    if (p.listed(slots[l])) sum += math::shifted_exp(scores[l], row_max);
  }
  return math::softmax_lse(row_max, warp_sum(sum));
}

struct SharedRows {  // per warp
  float scores[kMaxSlots];
  float query[kMaxDim];
};

// The dynamic shared memory of a launch: two windows of p.window rows, one per gathered matrix.
template <class scalar_t>
__device__ scalar_t* window_memory(int which, const Params& p) {
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return reinterpret_cast<scalar_t*>(dynamic_shared) + which * p.window * p.dim;
}

// The block's windows over two (rows, D) matrices of its (batch, head), a and b, in the
// two halves of the dynamic shared memory, staged (when `stage`) and synchronised.
template <class scalar_t>
struct Windows {
  RowSource<scalar_t> a, b;
};

template <class scalar_t>
__device__ Windows<scalar_t> stage_windows(const Params& p, const BlockRows& block, const Span& span, bool stage,
                                           const scalar_t* a, const scalar_t* b, int64_t rows) {
  const int64_t base = block.bh * rows * p.dim;
  const Windows<scalar_t> windows{stage_window(a + base, span, stage, p.dim, window_memory<scalar_t>(0, p)),
                                  stage_window(b + base, span, stage, p.dim, window_memory<scalar_t>(1, p))};
  __syncthreads();
  return windows;
}

// The windows of a block of query rows over the key-side matrices a and b (k and v): staged
// when enough of the block's slots name keys inside them.
template <class scalar_t>
__device__ Windows<scalar_t> query_block_windows(const Params& p, const BlockRows& block, const scalar_t* a,
                                                 const scalar_t* b) {
  const Span span(p.keys, block.first, p.window);
  int reads = 0, reads_in_window = 0;
  if (p.window > 0) {
    for (int64_t e = threadIdx.x; e < kWarps * p.slots; e += blockDim.x) {
      const int64_t i = block.first + e / p.slots;
      const int64_t j = i < p.queries ? p.slot_list(block.bh, i)[e % p.slots] : -1;
      reads += p.listed(j);
      reads_in_window += p.listed(j) && span.holds(j);
    }
  }
  const bool stage = p.window > 0 && block_stages_window(reads, reads_in_window);
  return stage_windows(p, block, span, stage, a, b, p.keys);
}

template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    forward_kernel(Params p, const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out, float* lse) {
  __shared__ SharedRows shared[kWarps];
  const BlockRows block(p.queries);
  const auto [keys, values] = query_block_windows(p, block, k, v);
  const int warp = threadIdx.x / 32;
  const int64_t i = block.first + warp;
  if (i >= p.queries) return;
  const int64_t row = block.bh * p.queries + i;
  SharedRows& mine = shared[warp];
  cache_row(mine.query, q + row * p.dim, p.dim);
  const int64_t* slots = p.slot_list(block.bh, i);
  const float row_lse = row_scores(p, slots, mine.query, keys, mine.scores);
  float acc[kColumnsPerLane] = {};
  for (int64_t l = 0; l < p.slots; ++l) {
    if (p.listed(slots[l])) {
      add_scaled_row(acc, math::softmax_prob(mine.scores[l], row_lse), values.row(slots[l]), p.dim);
    }
  }
  store_row(out + row * p.dim, acc, p.dim);
  if (threadIdx.x % 32 == 0) lse[row] = row_lse;
}

// Per query row: P and dL/dscore of every slot (kept for the per-key pass) and dL/dq.
template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    query_grad_kernel(Params p, const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* out,
                      const scalar_t* grad_out, const float* lse, float* probs, float* grad_scores, scalar_t* grad_q) {
  __shared__ SharedRows shared[kWarps];
  __shared__ float shared_grad_out[kWarps][kMaxDim];
  const BlockRows block(p.queries);
  const auto [keys, values] = query_block_windows(p, block, k, v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = block.first + warp;
  if (i >= p.queries) return;
  const int64_t row = block.bh * p.queries + i;
  SharedRows& mine = shared[warp];
  cache_row(mine.query, q + row * p.dim, p.dim);
  cache_row(shared_grad_out[warp], grad_out + row * p.dim, p.dim);
  const float delta = warp_dot(shared_grad_out[warp], out + row * p.dim, p.dim);  // dO_i . out_i
  const float row_lse = lse[row];
  const int64_t* slots = p.slot_list(block.bh, i);
  float acc[kColumnsPerLane] = {};
  for (int64_t l = 0; l < p.slots; ++l) {
    const int64_t j = slots[l];
    float prob = 0.f, grad_score = 0.f;
    if (p.listed(j)) {
      const scalar_t* key = keys.row(j);
      prob = math::softmax_prob(p.scale * warp_dot(mine.query, key, p.dim), row_lse);
      const float grad_prob = warp_dot(shared_grad_out[warp], values.row(j), p.dim);
      grad_score = math::softmax_logit_grad(prob, grad_prob, delta);
      add_scaled_row(acc, p.scale * grad_score, key, p.dim);
    }
    if (lane == 0) {
      probs[row * p.slots + l] = prob;
      grad_scores[row * p.slots + l] = grad_score;
    }
  }
  store_row(grad_q + row * p.dim, acc, p.dim);
}

// Per key row: dL/dk and dL/dv over the slots that name the key, in the fixed order of
// the per-key lists (perm, offsets), so the sums never depend on scheduling. The window
// here stages the query-side rows (q and dO) around the block's keys.
template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    key_grad_kernel(Params p, const scalar_t* q, const scalar_t* grad_out, const float* probs,
                    const float* grad_scores, const int64_t* perm, const int64_t* offsets, scalar_t* grad_k,
                    scalar_t* grad_v) {
  const BlockRows block(p.keys);
  const int64_t j = block.first + threadIdx.x / 32;
  const int64_t set = p.index_set(block.bh);
  const int64_t* list = perm + set * p.queries * p.slots;
  // The window holds query rows near the block's keys; it is staged when enough of the
  // queries that name these keys lie inside it.
  const Span span(p.queries, block.first, p.window);
  int reads = 0, reads_in_window = 0;
  if (p.window > 0 && j < p.keys) {
    for (int64_t e = offsets[set * (p.keys + 1) + j] + threadIdx.x % 32; e < offsets[set * (p.keys + 1) + j + 1];
         e += 32) {
      ++reads;
      reads_in_window += span.holds(list[e] / p.slots);
    }
  }
  const bool stage = p.window > 0 && block_stages_window(reads, reads_in_window);
  const auto [queries, grads_out] = stage_windows(p, block, span, stage, q, grad_out, p.queries);
  if (j >= p.keys) return;
  const int64_t key_row = block.bh * p.keys + j;
  float dk[kColumnsPerLane] = {}, dv[kColumnsPerLane] = {};
  for (int64_t e = offsets[set * (p.keys + 1) + j]; e < offsets[set * (p.keys + 1) + j + 1]; ++e) {
    const int64_t slot = block.bh * p.queries * p.slots + list[e];  // list[e] = i L + l
    const int64_t i = list[e] / p.slots;
    add_scaled_row(dk, p.scale * grad_scores[slot], queries.row(i), p.dim);
    add_scaled_row(dv, probs[slot], grads_out.row(i), p.dim);
  }
  store_row(grad_k + key_row * p.dim, dk, p.dim);
  store_row(grad_v + key_row * p.dim, dv, p.dim);
}

}  // namespace fastattn::cuda::sparse_kernels
