// drop_own_key_ on CUDA: one thread per row, each by own_key::drop_from_row. Works on the
// list in place, whatever its strides. A row is a few dozen slots read once; the op is
// bound by memory, not worth more threads per row.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastattn/own_key.h"

namespace fastattn::cuda {
namespace {

constexpr int kThreads = 256;

struct RowLayout {
  int64_t rows, heads, queries, slots;
  int64_t batch_stride, head_stride, query_stride, slot_stride;
};

template <typename Index>
__global__ void drop_own_key_kernel(Index* data, RowLayout layout) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < layout.rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t query = r % layout.queries, head = r / layout.queries % layout.heads;
    const int64_t batch = r / layout.queries / layout.heads;
    Index* row = data + batch * layout.batch_stride + head * layout.head_stride + query * layout.query_stride;
    own_key::drop_from_row<Index>(row, layout.slots, layout.slot_stride, static_cast<Index>(query));
  }
}

void drop_own_key_cuda(const at::Tensor& indices) {
  TORCH_CHECK_VALUE(indices.dim() == 4, "indices must have 4 dimensions (B, H, T, L), got ", indices.sizes());
  const RowLayout layout{indices.size(0) * indices.size(1) * indices.size(2), indices.size(1), indices.size(2),
                         indices.size(3), indices.stride(0), indices.stride(1), indices.stride(2), indices.stride(3)};
  if (layout.rows == 0 || layout.slots == 0) return;
  const c10::cuda::CUDAGuard guard(indices.device());
  // Enough blocks to fill the GPU; the loop in the kernel takes any further rows.
  const int64_t blocks = std::min<int64_t>((layout.rows + kThreads - 1) / kThreads, 65535);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "drop_own_key_cuda", [&] {
    drop_own_key_kernel<index_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        indices.data_ptr<index_t>(), layout);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) { m.impl("drop_own_key_", &drop_own_key_cuda); }

}  // namespace fastattn::cuda
