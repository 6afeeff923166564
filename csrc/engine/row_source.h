// The one interface a data kind implements to be read by biodali's sampler and I/O engine.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "engine/window.h"

namespace biodali {

class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual int64_t num_rows() const = 0;
  virtual const std::vector<FieldSpec> &fields() const = 0;
  // Fills slot s of every field of `window` with row window.rows[s] (unique, < num_rows(), in
  // emission order, not sorted), converted to window.fields[f].dtype, decoding on `pool`.
  // The window may be a recycled one: reuse its buffers (Resize keeps capacity). Called from
  // one thread at a time. Throws Error naming the file on bad data.
  virtual void Load(ThreadPool &pool, Window &window) const = 0;
};

}  // namespace biodali
