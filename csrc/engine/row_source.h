// The one interface a data kind implements to be read by biodali's sampler and I/O engine.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "engine/io/io_scheduler.h"
#include "engine/window.h"

namespace biodali {

// What a source prepared for loading one window: its plan and the reads it submitted.
class PreparedLoad {
 public:
  virtual ~PreparedLoad() = default;
};

class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual int64_t num_rows() const = 0;
  virtual const std::vector<FieldSpec> &fields() const = 0;

  // Plans loading `rows` (as Load takes them) and submits the byte ranges that needs to `io`,
  // so they are read while earlier windows decode: the stream prepares the next window before
  // it loads the current one. Errors as Load. Called from one thread at a time.
  virtual std::unique_ptr<PreparedLoad> Prepare(io::IoScheduler &io,
                                                const std::vector<int64_t> &rows) const = 0;

  // Fills slot s of every field of `window` with row window.rows[s] (unique, < num_rows(), in
  // emission order, not sorted), converted to window.fields[f].dtype, decoding on `pool`, from
  // `prepared`: what Prepare returned for the same rows. The window may be a recycled one:
  // reuse its buffers (Resize keeps capacity). Called from one thread at a time. Throws Error
  // naming the file on bad data.
  virtual void Load(ThreadPool &pool, PreparedLoad &prepared, Window &window) const = 0;

  // Prepare and Load in one (tests, tools).
  void Load(ThreadPool &pool, io::IoScheduler &io, Window &window) const {
    auto prepared = Prepare(io, window.rows);
    Load(pool, *prepared, window);
  }
};

}  // namespace biodali
