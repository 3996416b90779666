#pragma once

// The CUDA kernels of sparse_attention; launches live in sparse_attention.cu. One warp per
// row: a query row in the forward and the first backward pass, a key row in the second.
// Lanes split the head dimension, so every key or value row is read with coalesced loads;
// a row's scores wait in shared memory between the two softmax passes of softmax_math.h.

#include <cuda_runtime.h>

#include "fastattn/softmax_math.h"

namespace fastattn::cuda::sparse_kernels {

constexpr int kWarps = 4;  // rows per block
constexpr int kMaxSlots = 512;
constexpr int kMaxDim = 256;
constexpr int kColumnsPerLane = kMaxDim / 32;
constexpr unsigned kFullMask = 0xffffffffu;

struct Params {
  int64_t batch, heads, queries, keys, dim, slots;  // B, H, Tq, Tk, D, L
  int64_t index_batch, index_heads;                 // 1 or B, 1 or H
  float scale;
  const int64_t* indices;  // (index_batch, index_heads, Tq, L)

  __device__ int64_t index_set(int64_t bh) const {
    return (index_batch == 1 ? 0 : bh / heads) * index_heads + (index_heads == 1 ? 0 : bh % heads);
  }
  __device__ const int64_t* slot_list(int64_t query_row) const {
    const int64_t bh = query_row / queries;
    return indices + (index_set(bh) * queries + query_row % queries) * slots;
  }
};

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value = math::max_(value, __shfl_xor_sync(kFullMask, value, offset));
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

// Scores of every slot into shared memory (-inf for empty ones) and the row's lse.
template <class scalar_t>
__device__ float row_scores(const Params& p, int64_t row, const float* query, const scalar_t* k, float* scores) {
  const int64_t bh = row / p.queries;
  const int64_t* slots = p.slot_list(row);
  float row_max = -math::infinity<float>();
  for (int64_t l = 0; l < p.slots; ++l) {
    const int64_t j = slots[l];
    if (j < 0) continue;  // uniform across the warp: every lane reads the same slot
    const float score = p.scale * warp_dot(query, k + (bh * p.keys + j) * p.dim, p.dim);
    if (threadIdx.x % 32 == 0) scores[l] = score;
    row_max = math::max_(row_max, score);
  }
  __syncwarp();
  float sum = 0.f;
  for (int64_t l = threadIdx.x % 32; l < p.slots; l += 32) {
    if (slots[l] >= 0) sum += math::shifted_exp(scores[l], row_max);
  }
  return math::softmax_lse(row_max, warp_sum(sum));
}

struct SharedRows {  // per warp
  float scores[kMaxSlots];
  float query[kMaxDim];
};

template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    forward_kernel(Params p, const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out, float* lse) {
  __shared__ SharedRows shared[kWarps];
  const int warp = threadIdx.x / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= p.batch * p.heads * p.queries) return;
  const int64_t bh = row / p.queries;
  SharedRows& mine = shared[warp];
  cache_row(mine.query, q + row * p.dim, p.dim);
  const float row_lse = row_scores(p, row, mine.query, k, mine.scores);
  const int64_t* slots = p.slot_list(row);
  float acc[kColumnsPerLane] = {};
  for (int64_t l = 0; l < p.slots; ++l) {
    if (slots[l] >= 0) {
      add_scaled_row(acc, math::softmax_prob(mine.scores[l], row_lse), v + (bh * p.keys + slots[l]) * p.dim, p.dim);
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
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= p.batch * p.heads * p.queries) return;
  const int64_t bh = row / p.queries;
  SharedRows& mine = shared[warp];
  cache_row(mine.query, q + row * p.dim, p.dim);
  cache_row(shared_grad_out[warp], grad_out + row * p.dim, p.dim);
  const float delta = warp_dot(shared_grad_out[warp], out + row * p.dim, p.dim);  // dO_i . out_i
  const float row_lse = lse[row];
  const int64_t* slots = p.slot_list(row);
  float acc[kColumnsPerLane] = {};
  for (int64_t l = 0; l < p.slots; ++l) {
    const int64_t j = slots[l];
    float prob = 0.f, grad_score = 0.f;
    if (j >= 0) {
      const float score = p.scale * warp_dot(mine.query, k + (bh * p.keys + j) * p.dim, p.dim);
      prob = math::softmax_prob(score, row_lse);
      const float grad_prob = warp_dot(shared_grad_out[warp], v + (bh * p.keys + j) * p.dim, p.dim);
      grad_score = math::softmax_logit_grad(prob, grad_prob, delta);
      add_scaled_row(acc, p.scale * grad_score, k + (bh * p.keys + j) * p.dim, p.dim);
    }
    if (lane == 0) {
      probs[row * p.slots + l] = prob;
      grad_scores[row * p.slots + l] = grad_score;
    }
  }
  store_row(grad_q + row * p.dim, acc, p.dim);
}

// Per key row: dL/dk and dL/dv over the slots that name the key, in the fixed order of
// the per-key lists (perm, offsets), so the sums never depend on scheduling.
template <class scalar_t>
__global__ void __launch_bounds__(kWarps * 32)
    key_grad_kernel(Params p, const scalar_t* q, const scalar_t* grad_out, const float* probs,
                    const float* grad_scores, const int64_t* perm, const int64_t* offsets, scalar_t* grad_k,
                    scalar_t* grad_v) {
  const int64_t key_row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (key_row >= p.batch * p.heads * p.keys) return;
  const int64_t bh = key_row / p.keys, j = key_row % p.keys, set = p.index_set(bh);
  const int64_t* list = perm + set * p.queries * p.slots;
  float dk[kColumnsPerLane] = {}, dv[kColumnsPerLane] = {};
  for (int64_t e = offsets[set * (p.keys + 1) + j]; e < offsets[set * (p.keys + 1) + j + 1]; ++e) {
    const int64_t slot = bh * p.queries * p.slots + list[e];  // list[e] = i L + l
    const int64_t query_row = bh * p.queries + list[e] / p.slots;
    add_scaled_row(dk, p.scale * grad_scores[slot], q + query_row * p.dim, p.dim);
    add_scaled_row(dv, probs[slot], grad_out + query_row * p.dim, p.dim);
  }
  store_row(grad_k + key_row * p.dim, dk, p.dim);
  store_row(grad_v + key_row * p.dim, dv, p.dim);
}

}  // namespace fastattn::cuda::sparse_kernels
