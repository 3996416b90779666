#pragma once

// Inner loops compiled more than once: for the baseline x86-64 a portable wheel must
// assume, for AVX2 (with FMA and POPCNT) and, where a loop gains from it, for AVX-512 with
// VPOPCNTDQ; each block of work runs the best copy this CPU has. (GCC's target_clones
// would do the same by ifunc, but its resolvers pick the baseline clone on AMD Zen 3,
// measured: a 2x loss.) Everything a block calls must be always_inline, so that each entry
// point compiles its own copy of all of it.

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace fastattn::cpu {

enum class Level { kBaseline, kAvx2, kAvx512 };

// FASTATTN_CPU_LEVEL=baseline or avx2 in the environment caps the copies used, so the tests
// can run every copy on a CPU that has them all.
inline bool level_allowed(Level level) {
  static const Level cap = [] {
    const char* value = std::getenv("FASTATTN_CPU_LEVEL");
    const std::string_view name = value ? value : "";
    return name == "baseline" ? Level::kBaseline : name == "avx2" ? Level::kAvx2 : Level::kAvx512;
  }();
  return level <= cap;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTATTN_AVX2 __attribute__((target("avx2,fma,popcnt")))
#define FASTATTN_AVX512_POPCOUNT \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")))
inline bool cpu_has_avx2() {
  static const bool has = level_allowed(Level::kAvx2) && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
  return has;
}
inline bool cpu_has_avx512_popcount() {
  static const bool has = level_allowed(Level::kAvx512) && cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
  return has;
}
#else
#define FASTATTN_AVX2
#define FASTATTN_AVX512_POPCOUNT
inline bool cpu_has_avx2() { return false; }
inline bool cpu_has_avx512_popcount() { return false; }
#endif

// A block's body must be always_inline too; GCC takes the attribute after a lambda's
// parameter list.
#define FASTATTN_INLINE_BLOCK __attribute__((always_inline))

template <class Block>
FASTATTN_AVX2 void run_block_avx2(const Block& block, int64_t begin, int64_t end) {
  block(begin, end);
}

template <class Block>
FASTATTN_AVX512_POPCOUNT void run_block_avx512_popcount(const Block& block, int64_t begin, int64_t end) {
  block(begin, end);
}

// The widest instruction set a loop may use: kAvx512Popcount only for loops that gain from
// it (population counts), since wider vectors can lower the clock of the whole core.
enum class Widest { kAvx2, kAvx512Popcount };

// block(begin, end) over [0, items) in parallel, in the best instruction set available.
template <Widest kWidest = Widest::kAvx2, class Block>
void parallel_blocks(int64_t items, int64_t grain, const Block& block) {
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    if (kWidest == Widest::kAvx512Popcount && cpu_has_avx512_popcount()) {
      run_block_avx512_popcount(block, begin, end);
    } else if (cpu_has_avx2()) {
      run_block_avx2(block, begin, end);
    } else {
      block(begin, end);
    }
  });
}

}  // namespace fastattn::cpu
