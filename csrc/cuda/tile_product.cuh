#pragma once

// The one matrix product every fastattn CUDA kernel tiles: C (64 x 64, float) += A (64 x 32)
// times B (32 x 64), operands in shared memory, computed by a block of 128 threads.
// float operands use CUDA cores; half and bfloat16 use tensor cores (WMMA, float
// accumulation). Both store C to shared memory in the same row-major layout, so the
// kernels' epilogues do not care which one ran.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace fastattn::cuda {

constexpr int kThreads = 128;  // four warps
constexpr int kTile = 64;      // rows and columns of C
constexpr int kDepth = 32;     // the inner dimension of one product step

// How a torch dtype is held in shared memory for the product.
template <class scalar_t> struct Operand;
template <> struct Operand<float> {
  using type = float;
  static constexpr int kPad = 1;  // an odd row length spreads rows over all banks
};
template <> struct Operand<c10::Half> {
  using type = __half;
  static constexpr int kPad = 8;  // WMMA wants rows that are multiples of 16 bytes
};
template <> struct Operand<c10::BFloat16> {
  using type = __nv_bfloat16;
  static constexpr int kPad = 8;
};

template <class scalar_t>
__device__ __forceinline__ typename Operand<scalar_t>::type to_operand(float x) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return x;
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// Leading dimensions of the shared-memory tiles.
template <class scalar_t> constexpr int kLdA = kDepth + Operand<scalar_t>::kPad;  // A: 64 x 32
template <class scalar_t> constexpr int kLdB = kTile + Operand<scalar_t>::kPad;   // B: 32 x 64
constexpr int kLdC = kTile + 4;                                                    // C: 64 x 64 float

// B_TRANSPOSED: B is given as its transpose, a 64 x 32 tile with leading dimension kLdA.
template <class scalar_t, bool B_TRANSPOSED, class Enable = void>
struct TileProduct {
  // CUDA cores: thread t owns row t / 2 and the 32 columns (t % 2) + 2 k.
  float acc[kTile / 2];

  __device__ void zero() {
#pragma unroll
    for (int k = 0; k < kTile / 2; ++k) acc[k] = 0.f;
  }

  __device__ void multiply_add(const float* a, const float* b) {
    const int row = threadIdx.x >> 1, first_col = threadIdx.x & 1;
#pragma unroll 4
    for (int d = 0; d < kDepth; ++d) {
      const float a_value = a[row * kLdA<scalar_t> + d];
#pragma unroll
      for (int k = 0; k < kTile / 2; ++k) {
        const int col = first_col + 2 * k;
        const float b_value = B_TRANSPOSED ? b[col * kLdA<scalar_t> + d] : b[d * kLdB<scalar_t> + col];
        acc[k] = fmaf(a_value, b_value, acc[k]);
      }
    }
  }

  __device__ void store(float* c) const {
    const int row = threadIdx.x >> 1, first_col = threadIdx.x & 1;
#pragma unroll
    for (int k = 0; k < kTile / 2; ++k) c[row * kLdC + first_col + 2 * k] = acc[k];
  }
};

template <class scalar_t, bool B_TRANSPOSED>
struct TileProduct<scalar_t, B_TRANSPOSED, std::enable_if_t<!std::is_same_v<scalar_t, float>>> {
  // Tensor cores: warp w owns rows 16 w .. 16 w + 15, as four 16 x 16 fragments.
  using T = typename Operand<scalar_t>::type;
  using BLayout = std::conditional_t<B_TRANSPOSED, nvcuda::wmma::col_major, nvcuda::wmma::row_major>;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[kTile / 16];

  __device__ void zero() {
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) nvcuda::wmma::fill_fragment(acc[n], 0.f);
  }

  __device__ void multiply_add(const T* a, const T* b) {
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int d = 0; d < kDepth; d += 16) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major> a_frag;
      nvcuda::wmma::load_matrix_sync(a_frag, a + warp * 16 * kLdA<scalar_t> + d, kLdA<scalar_t>);
#pragma unroll
      for (int n = 0; n < kTile / 16; ++n) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, BLayout> b_frag;
        if constexpr (B_TRANSPOSED) {
          nvcuda::wmma::load_matrix_sync(b_frag, b + n * 16 * kLdA<scalar_t> + d, kLdA<scalar_t>);
        } else {
          nvcuda::wmma::load_matrix_sync(b_frag, b + d * kLdB<scalar_t> + n * 16, kLdB<scalar_t>);
        }
        nvcuda::wmma::mma_sync(acc[n], a_frag, b_frag, acc[n]);
      }
    }
  }

  __device__ void store(float* c) const {
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {
      nvcuda::wmma::store_matrix_sync(c + warp * 16 * kLdC + n * 16, acc[n], kLdC, nvcuda::wmma::mem_row_major);
    }
  }
};

}  // namespace fastattn::cuda
