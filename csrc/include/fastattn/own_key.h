#pragma once

// Shared-QK self exclusion (SPEC's `shared_qk` row): a query does not attend to its own
// key unless its list names no other key. The rule for one row of a key list, shared by
// the CPU and CUDA kernels of drop_own_key_.

#include <cstdint>

#include "fastattn/host_device.h"

namespace fastattn::own_key {

// Empties (sets to -1) the slots of `row` that name `query` when another slot names a
// valid key (one >= 0). slots entries, slot_stride elements apart. Both passes are
// written without branches, in the lists' own integer type, so that with a constant
// stride of 1 they vectorise on the CPU.
template <typename Index>
FASTATTN_HOST_DEVICE void drop_from_row(Index* row, int64_t slots, int64_t slot_stride, Index query) {
  Index others = 0;
  for (int64_t l = 0; l < slots; ++l) {
    const Index key = row[l * slot_stride];
    others |= static_cast<Index>((key >= 0) & (key != query));
  }
  if (!others) return;
  for (int64_t l = 0; l < slots; ++l) {
    const Index key = row[l * slot_stride];
    row[l * slot_stride] = key == query ? static_cast<Index>(-1) : key;
  }
}

}  // namespace fastattn::own_key
