// drop_own_key_ on the CPU: rows in parallel, each by own_key::drop_from_row, compiled
// per instruction set (instruction_sets.h). Works on the lists in place, whatever their
// strides.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "fastattn/own_key.h"
#include "instruction_sets.h"

namespace fastattn {
namespace {

// Rows per task: a row is a few dozen slots, so small tasks would cost more to hand out
// than to run.
constexpr int64_t kRowsPerTask = 1024;

void drop_own_key_cpu(const at::Tensor& indices) {
  TORCH_CHECK_VALUE(indices.dim() == 4, "indices must have 4 dimensions (B, H, T, L), got ", indices.sizes());
  const int64_t heads = indices.size(1), queries = indices.size(2), slots = indices.size(3);
  const int64_t rows = indices.size(0) * heads * queries;
  if (rows == 0 || slots == 0) return;
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "drop_own_key_cpu", [&] {
    index_t* data = indices.data_ptr<index_t>();
    const int64_t batch_stride = indices.stride(0), head_stride = indices.stride(1);
    const int64_t query_stride = indices.stride(2), slot_stride = indices.stride(3);
    cpu::parallel_blocks(rows, kRowsPerTask, [&](int64_t begin, int64_t end) FASTATTN_INLINE_BLOCK {
      // (batch, head, query) of the first row, then stepped: no divisions per row.
      int64_t query = begin % queries, head = begin / queries % heads, batch = begin / queries / heads;
      for (int64_t r = begin; r < end; ++r) {
        index_t* row = data + batch * batch_stride + head * head_stride + query * query_stride;
        // A constant stride for the rows of contiguous lists: their loops vectorise.
        if (slot_stride == 1) {
          own_key::drop_from_row<index_t>(row, slots, 1, static_cast<index_t>(query));
        } else {
          own_key::drop_from_row<index_t>(row, slots, slot_stride, static_cast<index_t>(query));
        }
        if (++query == queries) {
          query = 0;
          if (++head == heads) head = 0, ++batch;
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastattn, CPU, m) { m.impl("drop_own_key_", &drop_own_key_cpu); }

}  // namespace fastattn
