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
  // Fills `window` with the rows in window.rows (ascending, unique, < num_rows()), decoding on
  // `pool`. The window may be a recycled one: reuse its buffers (Resize keeps capacity).
  // Called from one thread at a time. Throws Error naming the file on bad data.
  virtual void Load(ThreadPool &pool, Window &window) const = 0;
};

}  // namespace biodali
