#pragma once

// Marks per-element math that the CPU kernels and the CUDA kernels share, so the CPU
// tests exercise the very formulas the GPU runs.
#if defined(__CUDACC__)
#define FASTATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTATTN_HOST_DEVICE inline
#endif
