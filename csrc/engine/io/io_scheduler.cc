#include "engine/io/io_scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace biodali::io {
namespace {
constexpr uint32_t kNoRequest = std::numeric_limits<uint32_t>::max();  // an empty range
}  // namespace

IoScheduler::IoScheduler(IoOptions options) : options_(options) {
  options_.depth = std::max(1, options_.depth);
  options_.max_request_nbytes = std::max<uint64_t>(1, options_.max_request_nbytes);
  workers_.reserve(options_.depth);
  for (int i = 0; i < options_.depth; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
    pthread_setname_np(workers_.back().native_handle(), "biodali-fetch");
  }
}

IoScheduler::~IoScheduler() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (auto &worker : workers_) worker.join();
}

IoStats IoScheduler::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::unique_ptr<FetchBatch> IoScheduler::Submit(const std::vector<ByteRange> &ranges) {
  std::unique_ptr<FetchBatch> batch(new FetchBatch(this));
  const size_t n = ranges.size();
  batch->range_request_.assign(n, kNoRequest);
  batch->range_offset_.assign(n, 0);
  batch->range_nbytes_.assign(n, 0);
  batch->range_done_.assign(n, false);
  std::vector<uint32_t> order;
  order.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!ranges[i].file && ranges[i].nbytes > 0) throw Error("I/O scheduler: a byte range without a file");
    batch->range_nbytes_[i] = ranges[i].nbytes;
    if (ranges[i].nbytes > 0) order.push_back(static_cast<uint32_t>(i));
  }
  // Coalesce: ranges of one file sorted by offset join while the gap between them is small
  // and the request stays within max_request_nbytes.
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    if (ranges[a].file != ranges[b].file) return ranges[a].file < ranges[b].file;
    return ranges[a].offset < ranges[b].offset;
  });
  struct Draft {
    uint64_t begin, end;
    uint32_t first_range;
  };
  std::vector<Draft> drafts;
  std::vector<uint32_t> draft_of(n, kNoRequest);
  for (size_t k = 0; k < order.size(); ++k) {
    const ByteRange &r = ranges[order[k]];
    const uint64_t end = r.offset + r.nbytes;
    // A range read in part is a request of its own.
    if (k > 0 && ranges[order[k - 1]].file == r.file && !r.part && !ranges[order[k - 1]].part) {
      Draft &d = drafts.back();
      if (r.offset <= d.end + options_.coalesce_gap_nbytes &&
          std::max(d.end, end) - d.begin <= options_.max_request_nbytes) {
        d.end = std::max(d.end, end);
        d.first_range = std::min(d.first_range, order[k]);
        draft_of[order[k]] = static_cast<uint32_t>(drafts.size() - 1);
        continue;
      }
    }
    drafts.push_back({r.offset, end, order[k]});
    draft_of[order[k]] = static_cast<uint32_t>(drafts.size() - 1);
  }
  // Requests start in the order of their first range: the order decoders will want them.
  std::vector<uint32_t> draft_order(drafts.size());
  std::iota(draft_order.begin(), draft_order.end(), 0u);
  std::sort(draft_order.begin(), draft_order.end(),
            [&](uint32_t a, uint32_t b) { return drafts[a].first_range < drafts[b].first_range; });
  std::vector<uint32_t> request_of_draft(drafts.size());
  batch->requests_.resize(drafts.size());
  for (size_t q = 0; q < draft_order.size(); ++q) {
    const Draft &d = drafts[draft_order[q]];
    FetchBatch::Request &request = batch->requests_[q];
    request.file = ranges[d.first_range].file;
    request.offset = d.begin;
    request.nbytes = d.end - d.begin;
    if (ranges[d.first_range].part) {
      request.part = ranges[d.first_range].part;
      request.head_nbytes = ranges[d.first_range].head_nbytes;
    }
    request_of_draft[draft_order[q]] = static_cast<uint32_t>(q);
  }
  // Requests whose bytes are there already (cached pages) are done now, on this thread: a
  // warm page cache costs one residency check per request, no hand-off to an I/O thread.
  uint64_t requested = 0;
  int64_t ready = 0;
  for (auto &request : batch->requests_) {
    requested += request.nbytes;
    if (request.file->FetchIfReady(request.offset, request.nbytes, options_.mode, &request.bytes,
                                   &request.mapped)) {
      request.state = FetchBatch::Request::kDone;
      ++ready;
    }
  }
  for (uint32_t i : order) {
    const uint32_t q = request_of_draft[draft_of[i]];
    batch->range_request_[i] = q;
    batch->range_offset_[i] = ranges[i].offset - batch->requests_[q].offset;
    ++batch->requests_[q].pending_ranges;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.ranges += static_cast<int64_t>(n);
    stats_.requests += static_cast<int64_t>(batch->requests_.size());
    stats_.requested_nbytes += requested;
    stats_.ready_requests += ready;
    if (static_cast<size_t>(ready) == batch->requests_.size()) return batch;
    batches_.push_back(batch.get());
  }
  work_ready_.notify_all();
  return batch;
}

bool IoScheduler::NextRequest(FetchBatch **out_batch, size_t *out_request) {
  // Requests someone waits for go first, whatever the cap.
  for (FetchBatch *batch : batches_) {
    for (size_t q = batch->next_queued_; q < batch->requests_.size(); ++q) {
      if (batch->requests_[q].state == FetchBatch::Request::kQueued && batch->requests_[q].urgent) {
        *out_batch = batch;
        *out_request = q;
        return true;
      }
    }
  }
  while (!batches_.empty()) {
    FetchBatch *batch = batches_.front();
    auto &requests = batch->requests_;
    while (batch->next_queued_ < requests.size() &&
           requests[batch->next_queued_].state != FetchBatch::Request::kQueued)
      ++batch->next_queued_;
    if (batch->next_queued_ == requests.size()) {
      batches_.pop_front();
      continue;
    }
    const uint64_t nbytes = requests[batch->next_queued_].nbytes;
    if (in_flight_nbytes_ > 0 && in_flight_nbytes_ + nbytes > options_.max_in_flight_nbytes) return false;
    *out_batch = batch;
    *out_request = batch->next_queued_;
    return true;
  }
  return false;
}

void IoScheduler::Release(FetchBatch::Request &request) {
  request.state = FetchBatch::Request::kReleased;
  in_flight_nbytes_ -= request.counted_nbytes;
  request.bytes = {};
}

void IoScheduler::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    FetchBatch *batch = nullptr;
    size_t q = 0;
    work_ready_.wait(lock, [&] { return stopping_ || NextRequest(&batch, &q); });
    if (stopping_) return;
    FetchBatch::Request &request = batch->requests_[q];
    request.state = FetchBatch::Request::kRunning;
    ++batch->running_;
    request.counted_nbytes = request.nbytes;
    in_flight_nbytes_ += request.nbytes;
    stats_.peak_in_flight_nbytes = std::max(stats_.peak_in_flight_nbytes, in_flight_nbytes_);
    lock.unlock();
    FetchHold hold;
    ConstBytes bytes;
    bool mapped = false;
    std::exception_ptr error;
    try {
      bytes = Fetch(request, &hold, &mapped);
    } catch (...) {
      error = std::current_exception();
    }
    FetchHold released;  // freed outside the lock
    lock.lock();
    request.hold = std::move(hold);
    request.bytes = bytes;
    request.mapped = mapped;
    request.error = error;
    request.state = FetchBatch::Request::kDone;
    --batch->running_;
    if (request.pending_ranges == 0 || batch->cancelled_) {
      released = std::move(request.hold);
      Release(request);
    }
    // Waiters may go on; this worker looks for the next request itself. Other workers are
    // woken only when bytes leave the in-flight count (Release) and requests wait for that.
    progress_.notify_all();
    lock.unlock();
    released.owner.reset();
    lock.lock();
  }
}

ConstBytes IoScheduler::Fetch(const FetchBatch::Request &request, FetchHold *hold, bool *mapped) const {
  const StoredFile &file = *request.file;
  static const bool narrow = [] {
    const char *v = std::getenv("BIODALI_IO_NARROW");
    return v == nullptr || std::string(v) != "0";
  }();
  if (narrow && request.part && options_.mode == FetchMode::kMapResident) {
    // The head first (one round trip), then only the part it names; the reader gets a view of
    // the whole range, of which it reads just those pages.
    FetchHold head_hold, part_hold;
    bool head_mapped = false;
    const ConstBytes head = file.Fetch(request.offset, std::min(request.head_nbytes, request.nbytes),
                                       FetchMode::kMapResident, &head_hold, &head_mapped);
    uint64_t begin = 0, end = 0;
    if (request.part(head, &begin, &end) && begin <= end && end <= request.nbytes) {
      bool part_mapped = false;
      if (end > begin)
        file.Fetch(request.offset + begin, end - begin, FetchMode::kMapResident, &part_hold, &part_mapped);
      return file.Fetch(request.offset, request.nbytes, FetchMode::kMapLazy, hold, mapped);
    }
  }
  return file.Fetch(request.offset, request.nbytes, options_.mode, hold, mapped);
}

ConstBytes FetchBatch::Wait(size_t i, bool *mapped) {
  if (mapped) *mapped = false;
  if (i >= range_request_.size()) throw Error(StrCat("I/O scheduler: range ", i, " of ", range_request_.size()));
  const uint32_t q = range_request_[i];
  if (q == kNoRequest) return {};
  std::unique_lock<std::mutex> lock(scheduler_->mutex_);
  Request &request = requests_[q];
  if (request.state == Request::kQueued && !request.urgent) {
    request.urgent = true;
    scheduler_->work_ready_.notify_one();
  }
  scheduler_->progress_.wait(lock, [&] { return request.state >= Request::kDone; });
  if (request.error) std::rethrow_exception(request.error);
  if (request.state == Request::kReleased || range_done_[i])
    throw Error(StrCat("I/O scheduler: range ", i, " waited for after it was done"));
  if (mapped) *mapped = request.mapped;
  return request.bytes.subspan(range_offset_[i], range_nbytes_[i]);
}

void FetchBatch::Done(size_t i) {
  if (i >= range_request_.size() || range_request_[i] == kNoRequest) return;
  FetchHold released;
  {
    std::lock_guard<std::mutex> lock(scheduler_->mutex_);
    if (range_done_[i]) return;
    range_done_[i] = true;
    Request &request = requests_[range_request_[i]];
    if (--request.pending_ranges == 0 && request.state == Request::kDone) {
      released = std::move(request.hold);
      scheduler_->Release(request);
      // Waking the I/O threads costs a context switch each: only when requests are queued
      // (with a warm page cache none are) and the bytes released may let one start.
      if (request.counted_nbytes > 0 && !scheduler_->batches_.empty()) scheduler_->work_ready_.notify_all();
    }
  }
}

FetchBatch::~FetchBatch() {
  std::vector<FetchHold> released;
  {
    std::unique_lock<std::mutex> lock(scheduler_->mutex_);
    cancelled_ = true;
    for (Request &request : requests_) {
      if (request.state == Request::kQueued) {
        request.state = Request::kReleased;
        ++scheduler_->stats_.cancelled_requests;
      }
    }
    auto &batches = scheduler_->batches_;
    batches.erase(std::remove(batches.begin(), batches.end(), this), batches.end());
    // Running requests write into this batch: wait for them (a read in progress is not
    // interrupted; it is at most max_request_nbytes).
    scheduler_->progress_.wait(lock, [&] { return running_ == 0; });
    for (Request &request : requests_) {
      if (request.state == Request::kDone) {
        released.push_back(std::move(request.hold));
        scheduler_->Release(request);
      }
    }
  }
  scheduler_->work_ready_.notify_all();
}

}  // namespace biodali::io
