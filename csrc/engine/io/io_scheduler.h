// Reads byte ranges ahead of the decoders, many requests in flight: the one I/O layer every
// row source gets its window's bytes through.
//
// A source submits all the ranges a window needs as one FetchBatch (shard indexes are read
// before, when it locates its chunks). Neighbouring ranges of one file are coalesced into
// requests of at most max_request_nbytes; requests are started in the order of their first
// range, by `depth` I/O threads that do nothing but I/O (so decoding never waits for a read
// it could have overlapped, and reads never wait for decoding). Decoders Wait() for their
// range and get its bytes as soon as its request is done, then call Done().
//
// Memory: requests are started while the bytes of started, not yet Done requests stay under
// max_in_flight_nbytes (one request always may start). A range someone waits for is started at
// once, cap or not, so decoders never deadlock on the cap: the bound is max_in_flight_nbytes
// plus one request per waiting decoder thread. For local files read by mapping, those bytes
// are page cache made resident ahead, not buffers of ours; the cap then keeps reading ahead
// from evicting what has not been decoded yet when the data is larger than memory.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/io/stored_file.h"

namespace biodali::io {

struct ByteRange {
  std::shared_ptr<const StoredFile> file;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  // Set when the reader will read only the first head_nbytes and one part of the range, a
  // part known only from those first bytes (a blosc frame's header and block table names the
  // blocks a few rows need): part(head, &begin, &end) returns it (offsets within the range;
  // false: all of it). Mapped modes then bring in only the head and that part (other pages
  // fault in if a reader touches them after all); read mode reads the whole range. Such a
  // range is a request of its own (not coalesced).
  std::function<bool(ConstBytes head, uint64_t *begin, uint64_t *end)> part;
  uint64_t head_nbytes = 0;
};

struct IoOptions {
  int depth = 16;                                 // I/O threads: requests in flight at once
  uint64_t max_in_flight_nbytes = uint64_t{256} << 20;
  uint64_t max_request_nbytes = uint64_t{8} << 20;  // coalesced requests stop growing here
  uint64_t coalesce_gap_nbytes = uint64_t{64} << 10;  // bytes between ranges read to join them
  FetchMode mode = FetchMode::kMapResident;
};

// What a scheduler has done so far (tests and benchmarks).
struct IoStats {
  int64_t ranges = 0;
  int64_t requests = 0;  // after coalescing
  uint64_t requested_nbytes = 0;  // sum of the requests' lengths
  uint64_t peak_in_flight_nbytes = 0;
  int64_t cancelled_requests = 0;
  int64_t ready_requests = 0;  // handed out at submission, no I/O needed (cached pages)
};

class IoScheduler;

class FetchBatch {
 public:
  ~FetchBatch();  // cancels requests not started yet; waits for this batch's running ones
  FetchBatch(const FetchBatch &) = delete;
  FetchBatch &operator=(const FetchBatch &) = delete;

  size_t size() const { return range_request_.size(); }
  // The bytes of range i (as submitted): blocks until its request is done; rethrows the
  // request's error (an Error naming the file). Valid until Done(i) or the batch's end.
  // `mapped`, when given, tells whether they are a view of a file mapping.
  ConstBytes Wait(size_t i, bool *mapped = nullptr);
  // The caller is finished with range i: once every range of a request is, its bytes leave
  // the in-flight count (and its buffer is freed).
  void Done(size_t i);

 private:
  friend class IoScheduler;
  struct Request {
    std::shared_ptr<const StoredFile> file;
    uint64_t offset = 0, nbytes = 0;
    std::function<bool(ConstBytes, uint64_t *, uint64_t *)> part;
    uint64_t head_nbytes = 0;
    uint64_t counted_nbytes = 0;  // in the in-flight count (0 when ready without I/O)
    int pending_ranges = 0;  // ranges not Done yet
    enum State { kQueued, kRunning, kDone, kReleased } state = kQueued;
    bool urgent = false;
    FetchHold hold;
    ConstBytes bytes;
    bool mapped = false;
    std::exception_ptr error;
  };
  explicit FetchBatch(IoScheduler *scheduler) : scheduler_(scheduler) {}

  IoScheduler *scheduler_;
  std::vector<Request> requests_;       // in start order
  std::vector<uint32_t> range_request_;  // range -> request
  std::vector<uint64_t> range_offset_;   // range -> offset within its request
  std::vector<uint64_t> range_nbytes_;
  std::vector<bool> range_done_;
  size_t next_queued_ = 0;  // requests before it have been started (or cancelled)
  int running_ = 0;
  bool cancelled_ = false;
};

class IoScheduler {
 public:
  explicit IoScheduler(IoOptions options = {});
  ~IoScheduler();
  IoScheduler(const IoScheduler &) = delete;
  IoScheduler &operator=(const IoScheduler &) = delete;

  const IoOptions &options() const { return options_; }
  // Submits `ranges` (any order, any files; empty ranges allowed) and returns at once.
  std::unique_ptr<FetchBatch> Submit(const std::vector<ByteRange> &ranges);
  IoStats stats() const;

 private:
  friend class FetchBatch;
  void WorkerLoop();
  // A request to start now (urgent ones first, then in submission order within the cap), or
  // false. Called with mutex_ held.
  bool NextRequest(FetchBatch **batch, size_t *request);
  void Release(FetchBatch::Request &request);  // mutex_ held
  // Fetches a request (an I/O thread, no lock held).
  ConstBytes Fetch(const FetchBatch::Request &request, FetchHold *hold, bool *mapped) const;

  IoOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;  // workers: a request may start, or stopping
  std::condition_variable progress_;    // waiters: a request finished
  std::deque<FetchBatch *> batches_;    // live batches with requests not started, oldest first
  uint64_t in_flight_nbytes_ = 0;
  IoStats stats_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace biodali::io
