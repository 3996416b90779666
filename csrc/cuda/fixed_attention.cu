// fixed_attention on CUDA: argument handling and launches. The kernels are in
// fixed_attention_kernels.cuh, the softmax math in softmax_math.h (shared with the CPU).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dispatch.cuh"
#include "fastattn/fixed_attention.h"
#include "fastattn/outputs.h"
#include "fixed_attention_kernels.cuh"

namespace fastattn::cuda {
namespace {

constexpr int64_t kMaxGridYZ = 65535;

int64_t blocks_for(int64_t items) { return (items + kTile - 1) / kTile; }

// Inputs laid out the way the kernels read them.
struct Inputs {
  at::Tensor logits;  // last stride 1 (a crop of a larger parameter needs no copy)
  at::Tensor v;       // contiguous (B, H, T, D)
  std::optional<at::Tensor> key_padding_mask;  // contiguous (B, T)

  Inputs(const at::Tensor& logits_in, const at::Tensor& v_in, const std::optional<at::Tensor>& mask_in)
      : logits(logits_in.stride(2) == 1 ? logits_in : logits_in.contiguous()), v(v_in.contiguous()) {
    if (mask_in) key_padding_mask = mask_in->contiguous();
  }

  FixedAttentionParams params(const at::Tensor& lse) const {
    return {v.size(0), v.size(1), v.size(2), v.size(3), logits.stride(0), logits.stride(1),
            key_padding_mask ? key_padding_mask->data_ptr<bool>() : nullptr, lse.data_ptr<float>()};
  }
};

void check_cuda_inputs(const at::Tensor& logits, const at::Tensor& v, const std::optional<at::Tensor>& mask) {
  check_fixed_attention_inputs(logits, v, mask);
  check_cuda_float(logits, "fixed_attention");
  // Grid dimensions y and z hold at most 65535 blocks (fastattn.ops._checks says so first).
  TORCH_CHECK_VALUE(v.size(0) * blocks_for(v.size(3)) <= kMaxGridYZ,
                    "fixed_attention on CUDA: batch * ceil(D / 64) must be at most 65535, got v ", v.sizes());
  TORCH_CHECK_VALUE(v.size(1) <= kMaxGridYZ, "fixed_attention on CUDA takes at most 65535 heads, got ", v.size(1));
}

// y = P x (or P^T x), one launch over every (row tile, head, batch item, column tile).
template <class scalar_t, bool TRANSPOSED>
void launch_probs_times(const FixedAttentionParams& p, const at::Tensor& logits, const at::Tensor& x,
                        at::Tensor& y, cudaStream_t stream) {
  const dim3 grid(blocks_for(p.length), p.heads, p.batch * blocks_for(p.dim));
  probs_times_kernel<scalar_t, TRANSPOSED><<<grid, kThreads, 0, stream>>>(
      p, logits.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_forward_cuda(const at::Tensor& logits_in, const at::Tensor& v_in,
                                                                const std::optional<at::Tensor>& mask_in) {
  check_cuda_inputs(logits_in, v_in, mask_in);
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Inputs in(logits_in, v_in, mask_in);
  const int64_t B = in.v.size(0), H = in.v.size(1), T = in.v.size(2), D = in.v.size(3);
  at::Tensor out = new_output({B, H, T, D}, in.v.options());
  at::Tensor lse = new_output({softmax_sets(in.v, in.key_padding_mask), H, T}, in.v.options().dtype(at::kFloat));
  if (lse.numel() == 0) return {out.zero_(), lse};
  const FixedAttentionParams params = in.params(lse);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTATTN_DISPATCH_CUDA_FLOATS(in.v.scalar_type(), "fixed_attention_forward_cuda", [&] {
    constexpr int kRowsPerBlock = 256 / 32;
    const int64_t blocks = (lse.numel() + kRowsPerBlock - 1) / kRowsPerBlock;
    row_logsumexp_kernel<scalar_t><<<blocks, 256, 0, stream>>>(params, in.logits.data_ptr<scalar_t>(),
                                                                lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (out.numel() > 0) launch_probs_times<scalar_t, false>(params, in.logits, in.v, out, stream);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fixed_attention_backward_cuda(const at::Tensor& grad_out_in,
                                                                 const at::Tensor& logits_in, const at::Tensor& v_in,
                                                                 const std::optional<at::Tensor>& mask_in,
                                                                 const at::Tensor& out, const at::Tensor& lse_in) {
  check_cuda_inputs(logits_in, v_in, mask_in);
  check_fixed_attention_backward_inputs(grad_out_in, logits_in, v_in, mask_in, out, lse_in);
  const c10::cuda::CUDAGuard guard(v_in.device());
  const Inputs in(logits_in, v_in, mask_in);
  const int64_t B = in.v.size(0), H = in.v.size(1), T = in.v.size(2), D = in.v.size(3);
  const at::Tensor grad_out = grad_out_in.contiguous();
  // A named local: params keeps a pointer into it for the launches below.
  const at::Tensor lse = lse_in.contiguous();
  at::Tensor grad_logits = new_output({H, T, T}, in.logits.options());
  at::Tensor grad_v = new_output({B, H, T, D}, in.v.options());
  if (H * T == 0) return {grad_logits, grad_v};
  // delta[b, h, i] = dO_i . out_i = sum_j P_ij dL/dP_ij
  const at::Tensor delta = (grad_out.to(at::kFloat) * out.to(at::kFloat)).sum(-1).contiguous();
  const FixedAttentionParams params = in.params(lse);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTATTN_DISPATCH_CUDA_FLOATS(in.v.scalar_type(), "fixed_attention_backward_cuda", [&] {
    if (grad_v.numel() > 0) launch_probs_times<scalar_t, true>(params, in.logits, grad_out, grad_v, stream);
    const dim3 grid(blocks_for(T), blocks_for(T), H);
    logits_grad_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        params, in.logits.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), in.v.data_ptr<scalar_t>(),
        delta.data_ptr<float>(), grad_logits.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_logits, grad_v};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("fixed_attention_forward", &fixed_attention_forward_cuda);
  m.impl("fixed_attention_backward", &fixed_attention_backward_cuda);
}

}  // namespace fastattn::cuda
