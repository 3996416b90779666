#pragma once

// Marks per-element math that the CPU kernels and the CUDA kernels share, so the CPU
// tests exercise the very formulas the GPU runs.
#if defined(__CUDACC__)
#define FASTATTN_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU kernels compile their loops once per instruction set
// (csrc/cpu/instruction_sets.h), and each copy must carry its own copy of this math.
#define FASTATTN_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FASTATTN_HOST_DEVICE inline
#endif
