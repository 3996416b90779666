// sparse_attention on CUDA: argument handling and launches. Kernels in
// sparse_attention_kernels.cuh; the per-key lists come from sparse_attention_host.h.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>

#include "dispatch.cuh"
#include "fastattn/outputs.h"
#include "fastattn/sparse_attention_host.h"
#include "sparse_attention_kernels.cuh"

namespace fastattn::cuda {
namespace {

using namespace sparse_kernels;

// Shared memory each block may give to its two windows. 64 KiB leaves room for two blocks
// (16 warps) per SM on Ampere and Hopper; a window is then 256 rows of bf16 at D = 64.
constexpr int64_t kWindowBytes = 64 * 1024;
// What a kernel may use in all (static plus dynamic) without opting in.
constexpr int64_t kDefaultSharedBytes = 48 * 1024;

// Rows per window for these key lists, or 0 for none, from their shape alone (the block
// decides on the device whether its window pays: sparse_attention_kernels.cuh). Structured
// masks (one list for every batch item and head) get the largest window that fits;
// per-item lists (LSH, random) gather directly. FASTATTN_SPARSE_WINDOW=0 in the
// environment turns windows off, so a benchmark can measure what they gain.
int64_t window_rows(const at::Tensor& indices, int64_t dim, int64_t element_size) {
  const char* switch_value = std::getenv("FASTATTN_SPARSE_WINDOW");
  if (switch_value != nullptr && std::string_view(switch_value) == "0") return 0;
  if (indices.size(0) != 1 || indices.size(1) != 1 || indices.numel() == 0 || dim == 0) return 0;
  const int64_t rows = kWindowBytes / (2 * dim * element_size);
  return rows > kWarps ? rows : 0;
}

// Lets `kernel` take up to kWindowBytes of dynamic shared memory on the current device,
// once per device and kernel: the opt-in is needed as soon as its static shared memory plus
// the dynamic part exceeds the default, and it costs a driver call.
template <class Kernel>
void allow_window_memory(Kernel kernel) {
  static std::mutex mutex;
  static std::set<std::pair<int, const void*>> allowed;
  const int device = c10::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mutex);
  if (!allowed.emplace(device, reinterpret_cast<const void*>(kernel)).second) return;
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (static_cast<int64_t>(attributes.sharedSizeBytes) + kWindowBytes > kDefaultSharedBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kWindowBytes)));
  }
}

// One block per kWarps rows of one (batch, head); the dynamic shared memory holds the windows.
struct Launch {
  dim3 grid;
  size_t shared_bytes;
};

template <class Kernel>
Launch launch_for(Kernel kernel, const Params& p, int64_t rows, int64_t element_size) {
  const Launch launch{dim3(static_cast<unsigned>(p.batch * p.heads * ((rows + kWarps - 1) / kWarps))),
                      static_cast<size_t>(2 * p.window * p.dim * element_size)};
  if (launch.shared_bytes > 0) allow_window_memory(kernel);
  return launch;
}

// True while the current stream records a CUDA graph: nothing may wait for the device then.
bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// Checked, contiguous inputs and the kernels' parameters.
struct Inputs {
  at::Tensor q, k, v, indices;
  Params params;

  Inputs(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& indices_in,
         double scale) {
    sparse_host::check_inputs(q_in, k_in, v_in, indices_in);
    check_cuda_float(q_in, "sparse_attention");
    TORCH_CHECK_VALUE(indices_in.size(3) <= kMaxSlots, "indices may have at most ", kMaxSlots,
                      " slots (L) on CUDA, got ", indices_in.size(3));
    TORCH_CHECK_VALUE(q_in.size(3) <= kMaxDim, "sparse_attention on CUDA takes D up to ", kMaxDim, ", got ",
                      q_in.size(3));
    // Under graph capture the indices cannot be read; the kernels then treat a slot
    // outside [0, Tk) as empty (sparse_attention_kernels.cuh).
    if (!capturing()) sparse_host::check_index_values(indices_in, k_in.size(2));
    q = q_in.contiguous();
    k = k_in.contiguous();
    v = v_in.contiguous();
    indices = indices_in.to(at::kLong).contiguous();
    params = {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), indices.size(3),
              indices.size(0), indices.size(1), static_cast<float>(scale), indices.data_ptr<int64_t>(),
              window_rows(indices, q.size(3), q.element_size())};
  }
};

std::tuple<at::Tensor, at::Tensor> sparse_attention_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                 const at::Tensor& v_in, const at::Tensor& indices_in,
                                                                 double scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Inputs in(q_in, k_in, v_in, indices_in, scale);
  at::Tensor out = new_output(in.q.sizes(), in.q.options());
  at::Tensor lse = new_output({in.q.size(0), in.q.size(1), in.q.size(2)}, in.q.options().dtype(at::kFloat));
  const int64_t rows = lse.numel();
  if (rows == 0) return {out, lse};
  FASTATTN_DISPATCH_CUDA_FLOATS(in.q.scalar_type(), "sparse_attention_forward_cuda", [&] {
    const Launch launch = launch_for(forward_kernel<scalar_t>, in.params, in.params.queries, in.q.element_size());
    forward_kernel<scalar_t><<<launch.grid, kWarps * 32, launch.shared_bytes, c10::cuda::getCurrentCUDAStream()>>>(
        in.params, in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& indices_in, double scale, const at::Tensor& out_in, const at::Tensor& lse_in) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const Inputs in(q_in, k_in, v_in, indices_in, scale);
  sparse_host::check_backward_inputs(grad_out_in, q_in, out_in, lse_in);
  const at::Tensor grad_out = grad_out_in.contiguous(), out = out_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor grad_q = new_output(in.q.sizes(), in.q.options());
  at::Tensor grad_k = new_output(in.k.sizes(), in.k.options());
  at::Tensor grad_v = new_output(in.v.sizes(), in.v.options());
  const Params& p = in.params;
  const int64_t query_rows = p.batch * p.heads * p.queries, key_rows = p.batch * p.heads * p.keys;
  // P and dL/dscore of every slot, for the per-key pass: O(B H T L) memory.
  at::Tensor probs = at::empty({query_rows, p.slots}, in.q.options().dtype(at::kFloat));
  at::Tensor grad_scores = at::empty_like(probs);
  const sparse_host::KeyLists lists = sparse_host::key_lists(in.indices, p.keys);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTATTN_DISPATCH_CUDA_FLOATS(in.q.scalar_type(), "sparse_attention_backward_cuda", [&] {
    if (query_rows > 0) {
      const Launch launch = launch_for(query_grad_kernel<scalar_t>, p, p.queries, in.q.element_size());
      query_grad_kernel<scalar_t><<<launch.grid, kWarps * 32, launch.shared_bytes, stream>>>(
          p, in.q.data_ptr<scalar_t>(), in.k.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(), probs.data_ptr<float>(),
          grad_scores.data_ptr<float>(), grad_q.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (key_rows > 0) {
      const Launch launch = launch_for(key_grad_kernel<scalar_t>, p, p.keys, in.q.element_size());
      key_grad_kernel<scalar_t><<<launch.grid, kWarps * 32, launch.shared_bytes, stream>>>(
          p, in.q.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), probs.data_ptr<float>(),
          grad_scores.data_ptr<float>(), lists.perm.data_ptr<int64_t>(), lists.offsets.data_ptr<int64_t>(),
          grad_k.data_ptr<scalar_t>(), grad_v.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("sparse_attention_forward", &sparse_attention_forward_cuda);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cuda);
}

}  // namespace fastattn::cuda
