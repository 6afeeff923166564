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
  // Loads `sorted_rows` (ascending, unique, < num_rows()) into a window, decoding on `pool`.
  // Called from one thread at a time. Throws Error naming the file on bad data.
  virtual std::shared_ptr<Window> Load(std::vector<int64_t> sorted_rows, ThreadPool &pool) const = 0;
};

}  // namespace biodali
