// The stream of rows one reader (one shard) yields, epoch after epoch, with windows loaded ahead
// on the reader's own I/O threads while the consumer works.
//
// Reads: every window's byte ranges go through one I/O scheduler (engine/io), the next
// window's submitted before the current one decodes, so reading overlaps decoding.
//
// Memory: at most 1 + prefetch_windows windows exist at once, counting those still referenced by
// rows handed out or by reader outputs sharing a window's memory: the producer waits for one
// to be released before loading the next. Only when the consumer is starved (it needs a new
// window while all are referenced: a batch spans more windows than that, or the caller still
// holds outputs of an earlier window) does it load one more. Windows smaller than a batch
// (the rows left at an epoch's end) are not counted: see StreamOptions::batch_size.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "common/thread_pool.h"
#include "engine/row_source.h"
#include "engine/sampler.h"

namespace biodali {

struct StreamOptions {
  SamplerOptions sampler;
  ShardOptions shard;
  int num_io_threads = 0;    // 0: one per core
  int prefetch_windows = 1;  // windows loaded ahead of the one being consumed
  // Type each field is held in by the windows (the reader's output types); empty: each
  // field's output_dtype.
  std::vector<DType> field_dtypes;
  // The I/O layer's settings: requests in flight (io.depth), bytes read ahead and not yet
  // decoded (io.max_in_flight_nbytes), coalescing. The stream submits the next window's reads
  // before it decodes the current one.
  io::IoOptions io;
  // Rows per batch of the reader (0: unknown). A short window (the rows left at an epoch's
  // end) with fewer rows is loaded outside the bound of 1 + prefetch_windows: a batch across
  // it spans three windows.
  int64_t batch_size = 0;
};

struct RowPosition {
  int64_t epoch = 0;
  int64_t position = 0;  // within the epoch's shard
};

struct RowRef {
  std::shared_ptr<const Window> window;
  int64_t slot = 0;  // consecutive positions of one window are consecutive slots
  int64_t row = 0;
};

class RowStream {
 public:
  RowStream(std::shared_ptr<const RowSource> source, StreamOptions options);
  ~RowStream();
  RowStream(const RowStream &) = delete;
  RowStream &operator=(const RowStream &) = delete;

  const RowSource &source() const { return *source_; }
  const StreamOptions &options() const { return options_; }
  // Rows this shard reads in `epoch` (DALI's shard sizes).
  int64_t ShardRows(int64_t epoch) const;

  // Moves to stream position `position` of `epoch`. Cheap: no I/O until the next Resolve().
  void Seek(int64_t epoch, int64_t position);
  // The next position, advancing past it; no I/O. Readers take positions ahead of the rows
  // they output (DALI's Loader reads one sample ahead), so taking one must not wait for its
  // window: only Resolve does.
  RowPosition NextPosition();
  // The row at a position taken by NextPosition; blocks until its window is loaded; rethrows
  // the loader's error. Positions are resolved in the order they were taken.
  RowRef Resolve(const RowPosition &position);
  // Advances one row without reading it.
  void Skip();

 private:
  struct LoadedWindow {
    int64_t epoch = 0;
    int64_t first_position = 0;  // the position held by slot 0
    std::shared_ptr<const Window> window;
    std::exception_ptr error;
    int64_t end_position() const { return first_position + window->num_slots(); }
    bool Contains(int64_t e, int64_t p) const {
      return e == epoch && p >= first_position && p < end_position();
    }
    bool Before(int64_t e, int64_t p) const {
      return epoch < e || (epoch == e && end_position() <= p);
    }
  };

  void Advance();
  void AcquireWindowFor(int64_t epoch, int64_t position);
  void StartProducer(int64_t epoch, int64_t position);
  void StopProducer();
  void ProducerLoop(int64_t epoch, int64_t position);

  std::shared_ptr<const RowSource> source_;
  StreamOptions options_;
  ThreadPool pool_;
  io::IoScheduler io_;
  std::shared_ptr<WindowPool> window_pool_;
  // Windows with fewer rows than a batch: not counted in the bound, and kept apart so that
  // their small buffers are reused for them (a full-size window taken fresh for the next epoch
  // would cost a page fault and a zeroing per page, once per epoch).
  std::shared_ptr<WindowPool> small_window_pool_;

  // Consumer side (the caller's thread).
  int64_t epoch_ = 0, position_ = 0;
  LoadedWindow current_;
  bool has_current_ = false;

  // Producer side.
  std::thread producer_;
  std::mutex mutex_;
  std::condition_variable queue_changed_;
  std::deque<LoadedWindow> queue_;
  bool stop_ = false;
  bool producer_done_ = false;
  std::atomic<bool> consumer_starved_{false};
};

}  // namespace biodali
