#pragma once

// The CUDA kernels of fixed_attention. What one block computes lives here; how blocks
// are launched lives in fixed_attention.cu.
//
//   row_logsumexp_kernel: one warp per softmax row, lse over the row's keys.
//   probs_times_kernel:   Y = P X for one (b, h) and a 64 x 64 tile of Y, with P rebuilt
//                         from logits and lse tile by tile (never stored): the forward
//                         (P V) and, transposed, the gradient of V (P^T dO).
//   logits_grad_kernel:   a 64 x 64 tile of dL/dlogits of one head, summed over the batch
//                         in a fixed order (deterministic, no atomics).

#include "fastattn/softmax_math.h"
#include "tile_product.cuh"

namespace fastattn::cuda {

struct FixedAttentionParams {
  int64_t batch, heads, length, dim;
  int64_t logits_stride_head, logits_stride_row;  // the last stride is 1
  const bool* key_padding;                        // (B, T), or nullptr without a mask
  const float* lse;                               // (S, H, T): S = B with a mask, else 1

  __device__ int64_t softmax_set(int64_t b) const { return key_padding ? b : 0; }
  __device__ bool padded(int64_t b, int64_t j) const { return key_padding && key_padding[b * length + j]; }
};

// P[i, j] of batch item b, head h: zero outside the T x T square and on padded keys.
template <class scalar_t>
__device__ __forceinline__ float probability(const FixedAttentionParams& p, const scalar_t* logits, int64_t b,
                                             int64_t h, int64_t i, int64_t j) {
  if (i >= p.length || j >= p.length || p.padded(b, j)) return 0.f;
  const float logit = static_cast<float>(logits[h * p.logits_stride_head + i * p.logits_stride_row + j]);
  return math::softmax_prob(logit, p.lse[(p.softmax_set(b) * p.heads + h) * p.length + i]);
}

// Copies rows [row0, row0 + 64) and columns [col0, col0 + width) of a (T, D) matrix into
// a shared tile with leading dimension ld, zero-filled outside the matrix.
template <class scalar_t, int ROWS, int WIDTH>
__device__ __forceinline__ void load_tile(typename Operand<scalar_t>::type* tile, int ld, const scalar_t* matrix,
                                          int64_t rows, int64_t cols, int64_t row0, int64_t col0) {
  for (int e = threadIdx.x; e < ROWS * WIDTH; e += kThreads) {
    const int r = e / WIDTH, c = e % WIDTH;
    const bool inside = row0 + r < rows && col0 + c < cols;
    const float value = inside ? static_cast<float>(matrix[(row0 + r) * cols + col0 + c]) : 0.f;
    tile[r * ld + c] = to_operand<scalar_t>(value);
  }
}

template <class scalar_t>
__global__ void __launch_bounds__(256) row_logsumexp_kernel(FixedAttentionParams p, const scalar_t* logits,
                                                             float* lse) {
  const int64_t rows = (p.key_padding ? p.batch : 1) * p.heads * p.length;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps leave together, so the shuffles below stay full
  const int lane = threadIdx.x % 32;
  const int64_t s = row / (p.heads * p.length), h = (row / p.length) % p.heads, i = row % p.length;
  const scalar_t* logit_row = logits + h * p.logits_stride_head + i * p.logits_stride_row;
  float row_max = -math::infinity<float>();
  for (int64_t j = lane; j < p.length; j += 32) {
    if (!p.padded(s, j)) row_max = math::max_(row_max, static_cast<float>(logit_row[j]));
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    row_max = math::max_(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
  }
  float sum = 0.f;
  for (int64_t j = lane; j < p.length; j += 32) {
    if (!p.padded(s, j)) sum += math::shifted_exp(static_cast<float>(logit_row[j]), row_max);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (lane == 0) lse[row] = math::softmax_lse(row_max, sum);
}

// Block (row tile, h, b * column tiles). TRANSPOSED: rows are keys j and the product runs
// over queries i, giving P^T X.
template <class scalar_t, bool TRANSPOSED>
__global__ void __launch_bounds__(kThreads) probs_times_kernel(FixedAttentionParams p, const scalar_t* logits,
                                                                const scalar_t* x, scalar_t* y) {
  using T = typename Operand<scalar_t>::type;
  __shared__ __align__(128) T p_tile[kTile * kLdA<scalar_t>];
  __shared__ __align__(128) T x_tile[kDepth * kLdB<scalar_t>];
  __shared__ __align__(128) float y_tile[kTile * kLdC];

  const int64_t column_tiles = (p.dim + kTile - 1) / kTile;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile, h = blockIdx.y;
  const int64_t b = blockIdx.z / column_tiles, col0 = (blockIdx.z % column_tiles) * kTile;
  const int64_t matrix_offset = (b * p.heads + h) * p.length * p.dim;

  TileProduct<scalar_t, false> product;
  product.zero();
  for (int64_t depth0 = 0; depth0 < p.length; depth0 += kDepth) {
    for (int e = threadIdx.x; e < kTile * kDepth; e += kThreads) {
      // Consecutive threads read consecutive logits (j is the contiguous index).
      const int r = TRANSPOSED ? e % kTile : e / kDepth;
      const int c = TRANSPOSED ? e / kTile : e % kDepth;
      const int64_t i = TRANSPOSED ? depth0 + c : row0 + r;
      const int64_t j = TRANSPOSED ? row0 + r : depth0 + c;
      p_tile[r * kLdA<scalar_t> + c] = to_operand<scalar_t>(probability(p, logits, b, h, i, j));
    }
    load_tile<scalar_t, kDepth, kTile>(x_tile, kLdB<scalar_t>, x + matrix_offset, p.length, p.dim, depth0, col0);
    __syncthreads();
    product.multiply_add(p_tile, x_tile);
    __syncthreads();
  }
  product.store(y_tile);
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
    const int r = e / kTile, c = e % kTile;
    if (row0 + r < p.length && col0 + c < p.dim) {
      y[matrix_offset + (row0 + r) * p.dim + col0 + c] = static_cast<scalar_t>(y_tile[r * kLdC + c]);
    }
  }
}

// Block (i tile, j tile, h). dL/dlogits[h, i, j] = sum_b P_b[i, j] (dO_b[i] . V_b[j] - delta_b[i]).
// Without a mask P does not depend on b, so the batch folds into one product of inner
// dimension B * D and P is applied once at the end.
template <class scalar_t>
__global__ void __launch_bounds__(kThreads)
    logits_grad_kernel(FixedAttentionParams p, const scalar_t* logits, const scalar_t* grad_out, const scalar_t* v,
                       const float* delta, scalar_t* grad_logits) {
  using T = typename Operand<scalar_t>::type;
  constexpr int kOwned = kTile * kTile / kThreads;  // element e = threadIdx.x + kThreads * k
  __shared__ __align__(128) T grad_out_tile[kTile * kLdA<scalar_t>];
  __shared__ __align__(128) T v_tile[kTile * kLdA<scalar_t>];
  __shared__ __align__(128) float grad_probs[kTile * kLdC];
  __shared__ float row_delta[kTile];

  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTile, j0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int64_t h = blockIdx.z;
  const bool per_item = p.key_padding != nullptr;
  float grad[kOwned];
#pragma unroll
  for (int k = 0; k < kOwned; ++k) grad[k] = 0.f;

  // grad += P_b * (grad_probs - delta) over the tile, for softmax set b.
  auto accumulate = [&](int64_t b) {
#pragma unroll
    for (int k = 0; k < kOwned; ++k) {
      const int e = threadIdx.x + kThreads * k, r = e / kTile, c = e % kTile;
      const float prob = probability(p, logits, b, h, i0 + r, j0 + c);
      grad[k] += math::softmax_logit_grad(prob, grad_probs[r * kLdC + c], row_delta[r]);
    }
  };

  TileProduct<scalar_t, true> product;
  product.zero();
  if (!per_item && threadIdx.x < kTile) row_delta[threadIdx.x] = 0.f;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t matrix_offset = (b * p.heads + h) * p.length * p.dim;
    if (per_item) product.zero();
    for (int64_t depth0 = 0; depth0 < p.dim; depth0 += kDepth) {
      load_tile<scalar_t, kTile, kDepth>(grad_out_tile, kLdA<scalar_t>, grad_out + matrix_offset, p.length, p.dim,
                                         i0, depth0);
      load_tile<scalar_t, kTile, kDepth>(v_tile, kLdA<scalar_t>, v + matrix_offset, p.length, p.dim, j0, depth0);
      __syncthreads();
      product.multiply_add(grad_out_tile, v_tile);
      __syncthreads();
    }
    if (threadIdx.x < kTile) {
      const int64_t i = i0 + threadIdx.x;
      const float delta_i = i < p.length ? delta[(b * p.heads + h) * p.length + i] : 0.f;
      row_delta[threadIdx.x] = per_item ? delta_i : row_delta[threadIdx.x] + delta_i;
    }
    if (per_item) {
      product.store(grad_probs);
      __syncthreads();
      accumulate(b);
      __syncthreads();
    }
  }
  if (!per_item) {
    product.store(grad_probs);
    __syncthreads();
    accumulate(0);
  }
#pragma unroll
  for (int k = 0; k < kOwned; ++k) {
    const int e = threadIdx.x + kThreads * k, r = e / kTile, c = e % kTile;
    if (i0 + r < p.length && j0 + c < p.length) {
      grad_logits[(h * p.length + i0 + r) * p.length + j0 + c] = static_cast<scalar_t>(grad[k]);
    }
  }
}

}  // namespace fastattn::cuda
