// The LSH ops on CUDA: argument handling and launches. Kernels in lsh_kernels.cuh.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dispatch.cuh"
#include "fastattn/lsh_host.h"
#include "fastattn/outputs.h"
#include "lsh_kernels.cuh"

namespace fastattn::cuda {
namespace {

using namespace lsh_kernels;

int64_t blocks_for_rows(int64_t rows) { return (rows + kWarps - 1) / kWarps; }

// ||x_row||^2 of every row of a (B, H, T, D) tensor as float (B, H, T), by sq_norm_kernel.
at::Tensor row_sq_norms(const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor sq_norms = new_output({x.size(0), x.size(1), x.size(2)}, x.options().dtype(at::kFloat));
  const int64_t rows = sq_norms.numel();
  if (rows == 0) return sq_norms;
  FASTATTN_DISPATCH_CUDA_FLOATS(x.scalar_type(), "row_sq_norms_cuda", [&] {
    sq_norm_kernel<scalar_t><<<blocks_for_rows(rows), kWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), rows, x.size(3), sq_norms.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return sq_norms;
}

// The transform's parameters, with the squared norms and their maxima computed.
struct Transform {
  at::Tensor x;  // contiguous
  std::optional<at::Tensor> mask;
  lsh_host::TransformSetup setup;
  TransformParams params;

  Transform(const at::Tensor& x_in, c10::string_view scheme, c10::string_view role,
            const std::optional<at::Tensor>& mask_in, const std::optional<at::Tensor>& keys, int64_t m, double U)
      : x(x_in.contiguous()),
        mask(mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt),
        setup(lsh_host::transform_setup(x, std::string(scheme), std::string(role), mask, keys, m, U, at::kFloat,
                                        row_sq_norms)) {
    params = {x.size(0) * x.size(1) * x.size(2),
              x.size(1),
              x.size(2),
              x.size(3),
              setup.scheme,
              setup.role,
              setup.m,
              mips::extra_dims(setup.scheme, setup.m),
              static_cast<float>(setup.U),
              mask ? mask->data_ptr<bool>() : nullptr,
              setup.sq_norms.data_ptr<float>(),
              setup.key_max_sq.data_ptr<float>(),
              setup.query_max_sq.data_ptr<float>()};
  }
};

at::Tensor mips_transform_cuda(const at::Tensor& x_in, c10::string_view scheme, c10::string_view role,
                               const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& keys,
                               int64_t m, double U) {
  check_cuda_float(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Transform transform(x_in, scheme, role, mask, keys, m, U);
  const TransformParams& p = transform.params;
  at::Tensor out = new_output({x_in.size(0), x_in.size(1), x_in.size(2), p.dim + p.extra}, x_in.options());
  if (p.rows == 0) return out;
  FASTATTN_DISPATCH_CUDA_FLOATS(x_in.scalar_type(), "mips_transform_cuda", [&] {
    transform_kernel<scalar_t><<<blocks_for_rows(p.rows), kWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
        p, transform.x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor alsh_hash_cuda(const at::Tensor& x_in, c10::string_view scheme, c10::string_view role,
                          const at::Tensor& projections_in, const std::optional<at::Tensor>& mask,
                          const std::optional<at::Tensor>& keys, int64_t m, double U) {
  check_cuda_float(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const Transform transform(x_in, scheme, role, mask, keys, m, U);
  const TransformParams& p = transform.params;
  lsh_host::check_projections(projections_in, p.dim + p.extra, x_in);
  const int64_t n_bits = projections_in.size(0);
  const int64_t cache_bytes = kWarps * p.dim * static_cast<int64_t>(sizeof(float));
  TORCH_CHECK_VALUE(cache_bytes <= 48 * 1024, "alsh_hash on CUDA takes D up to ", 48 * 1024 / (kWarps * 4),
                    ", got ", p.dim);
  const at::Tensor projections = projections_in.to(at::kFloat).contiguous();
  const int64_t words = (n_bits + 63) / 64;
  at::Tensor codes = new_output({x_in.size(0), x_in.size(1), x_in.size(2), words}, x_in.options().dtype(at::kLong));
  if (p.rows == 0) return codes;
  FASTATTN_DISPATCH_CUDA_FLOATS(x_in.scalar_type(), "alsh_hash_cuda", [&] {
    hash_kernel<scalar_t><<<blocks_for_rows(p.rows), kWarps * 32, cache_bytes, c10::cuda::getCurrentCUDAStream()>>>(
        p, transform.x.data_ptr<scalar_t>(), projections.data_ptr<float>(), static_cast<int>(n_bits),
        codes.data_ptr<int64_t>(), static_cast<int>(p.dim));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return codes;
}

at::Tensor topk_keys_cuda(const at::Tensor& q_codes_in, const at::Tensor& k_codes_in, int64_t L,
                          const std::optional<at::Tensor>& mask_in, c10::string_view mode_in,
                          const std::optional<at::Tensor>& q_in, const std::optional<at::Tensor>& k_in,
                          std::optional<int64_t> n_bits_in) {
  const std::string mode(mode_in);
  const int n_bits = lsh_host::check_topk_inputs(q_codes_in, k_codes_in, L, mask_in, mode, q_in, k_in, n_bits_in);
  const bool bucket = mode == "bucket";
  TORCH_CHECK_VALUE(!bucket || L <= kMaxL, "topk_keys on CUDA in bucket mode takes L up to ", kMaxL, ", got ", L);
  const c10::cuda::CUDAGuard guard(q_codes_in.device());
  const at::Tensor q_codes = q_codes_in.contiguous(), k_codes = k_codes_in.contiguous();
  const std::optional<at::Tensor> mask = mask_in ? std::optional<at::Tensor>(mask_in->contiguous()) : std::nullopt;
  const int64_t B = q_codes.size(0), H = q_codes.size(1), Tq = q_codes.size(2), Tk = k_codes.size(2);
  at::Tensor out = new_output({B, H, Tq, L}, q_codes.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  const int words = static_cast<int>(q_codes.size(3));
  const int64_t staged_bytes = Tk * words * static_cast<int64_t>(sizeof(int64_t));
  const bool stage_keys = !bucket && staged_bytes <= kMaxStagedCodeBytes;
  const TopkParams params{B * H * Tq, H, Tq, Tk, words, n_bits, static_cast<int>(L),
                          q_codes.data_ptr<int64_t>(), k_codes.data_ptr<int64_t>(),
                          mask ? mask->data_ptr<bool>() : nullptr, out.data_ptr<int32_t>(), stage_keys};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (!bucket) {
    hamming_topk_kernel<<<blocks_for_rows(params.rows), kWarps * 32, stage_keys ? staged_bytes : 0, stream>>>(params);
  } else {
    const at::Tensor q = q_in->to(at::kFloat).contiguous(), k = k_in->to(at::kFloat).contiguous();
    bucket_topk_kernel<<<blocks_for_rows(params.rows), kWarps * 32, 0, stream>>>(
        BucketParams{params, q.size(3), q.data_ptr<float>(), k.data_ptr<float>()});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CUDA, m) {
  m.impl("mips_transform", &mips_transform_cuda);
  m.impl("alsh_hash", &alsh_hash_cuda);
  m.impl("topk_keys", &topk_keys_cuda);
}

}  // namespace fastattn::cuda
