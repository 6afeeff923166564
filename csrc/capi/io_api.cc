// C API over the I/O layer (engine/io) for tests: fetches byte ranges of files through an
// IoScheduler exactly as readers do. Loaded from Python with ctypes (biodali._testing).
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "capi/guarded.h"
#include "common/error.h"
#include "engine/io/io_scheduler.h"
#include "engine/io/local_file.h"

#define BIODALI_API extern "C" __attribute__((visibility("default")))

using biodali::capi::Guarded;

// Fetches ranges (file_index[i] into paths, offsets[i], lengths[i]) through one FetchBatch of
// a scheduler with the given options (mode 0: map resident, 1: read, 2: map lazy). Waits for
// the first `num_waited` ranges in order, copying each into dst (ranges back to back) and
// marking it Done, then drops the batch (cancelling what was not started). stats_out: ranges,
// requests, requested bytes, peak in-flight bytes, cancelled requests, requests ready at
// submission (no I/O).
BIODALI_API int biodali_io_fetch(const char *const *paths, int num_paths, const int64_t *file_index,
                                 const uint64_t *offsets, const uint64_t *lengths, int64_t num_ranges,
                                 int depth, uint64_t max_in_flight_nbytes, uint64_t coalesce_gap_nbytes,
                                 uint64_t max_request_nbytes, int mode, int64_t num_waited, void *dst,
                                 size_t dst_nbytes, int64_t *stats_out, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    namespace io = biodali::io;
    std::vector<std::shared_ptr<const io::StoredFile>> files;
    for (int f = 0; f < num_paths; ++f) {
      auto file = io::OpenStoredFile(paths[f], /*many_reads=*/true);
      if (!file) biodali::FailAt(paths[f], "does not exist");
      files.push_back(std::move(file));
    }
    std::vector<io::ByteRange> ranges(static_cast<size_t>(num_ranges));
    for (int64_t i = 0; i < num_ranges; ++i) {
      if (file_index[i] < 0 || file_index[i] >= num_paths) throw biodali::Error("file index out of range");
      ranges[i].file = files[file_index[i]];
      ranges[i].offset = offsets[i];
      ranges[i].nbytes = lengths[i];
    }
    io::IoOptions options;
    options.depth = depth;
    options.max_in_flight_nbytes = max_in_flight_nbytes;
    options.coalesce_gap_nbytes = coalesce_gap_nbytes;
    options.max_request_nbytes = max_request_nbytes;
    options.mode = mode == 1 ? io::FetchMode::kRead : mode == 2 ? io::FetchMode::kMapLazy
                                                               : io::FetchMode::kMapResident;
    io::IoScheduler scheduler(options);
    {
      auto batch = scheduler.Submit(ranges);
      size_t at = 0;
      for (int64_t i = 0; i < num_waited && i < num_ranges; ++i) {
        io::ConstBytes bytes = batch->Wait(static_cast<size_t>(i));
        if (bytes.size() != lengths[i]) throw biodali::Error("range delivered with the wrong length");
        if (at + bytes.size() > dst_nbytes) throw biodali::Error("destination too small");
        if (!bytes.empty()) std::memcpy(static_cast<std::byte *>(dst) + at, bytes.data(), bytes.size());
        at += bytes.size();
        batch->Done(static_cast<size_t>(i));
      }
    }
    const io::IoStats stats = scheduler.stats();
    stats_out[0] = stats.ranges;
    stats_out[1] = stats.requests;
    stats_out[2] = static_cast<int64_t>(stats.requested_nbytes);
    stats_out[3] = static_cast<int64_t>(stats.peak_in_flight_nbytes);
    stats_out[4] = stats.cancelled_requests;
    stats_out[5] = stats.ready_requests;
  });
}
