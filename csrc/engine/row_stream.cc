#include "engine/row_stream.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <limits>

#include "common/error.h"

namespace biodali {
namespace {

// BIODALI_IO_MODE=map|read|lazy overrides how local files are fetched (benchmarks compare
// them; map is the default, see engine/io/stored_file.h).
io::FetchMode FetchModeFromEnvironment(io::FetchMode fallback) {
  const char *mode = std::getenv("BIODALI_IO_MODE");
  if (mode == nullptr || *mode == '\0') return fallback;
  const std::string name(mode);
  if (name == "map") return io::FetchMode::kMapResident;
  if (name == "read") return io::FetchMode::kRead;
  if (name == "lazy") return io::FetchMode::kMapLazy;
  throw Error(StrCat("BIODALI_IO_MODE is '", name, "'; expected map, read or lazy"));
}

StreamOptions Normalized(StreamOptions options, const RowSource &source) {
  options.prefetch_windows = std::max(1, options.prefetch_windows);
  options.io.mode = FetchModeFromEnvironment(options.io.mode);
  const auto &fields = source.fields();
  if (options.field_dtypes.empty())
    for (const auto &f : fields) options.field_dtypes.push_back(f.output_dtype);
  if (options.field_dtypes.size() != fields.size())
    throw Error(StrCat("field_dtypes has ", options.field_dtypes.size(), " types for ", fields.size(),
                       " fields"));
  return options;
}

int DefaultThreads(int requested) {
  if (requested > 0) return requested;
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace

RowStream::RowStream(std::shared_ptr<const RowSource> source, StreamOptions options)
    : source_(std::move(source)),
      options_(Normalized(std::move(options), *source_)),
      pool_(DefaultThreads(options_.num_io_threads)),
      io_(options_.io),
      window_pool_(std::make_shared<WindowPool>(1 + options_.prefetch_windows)),
      small_window_pool_(std::make_shared<WindowPool>(std::numeric_limits<int>::max())) {
  const auto &shard = options_.shard;
  if (shard.num_shards < 1 || shard.shard_id < 0 || shard.shard_id >= shard.num_shards)
    throw Error(StrCat("invalid shard_id ", shard.shard_id, " for num_shards ", shard.num_shards));
  if (source_->num_rows() < shard.num_shards)
    throw Error(StrCat("the data has ", source_->num_rows(), " rows, fewer than num_shards (",
                       shard.num_shards, ")"));
}

RowStream::~RowStream() { StopProducer(); }

int64_t RowStream::ShardRows(int64_t epoch) const {
  int v = VirtualShard(options_.shard, epoch);
  int64_t n = source_->num_rows();
  return ShardBegin(v + 1, options_.shard.num_shards, n) - ShardBegin(v, options_.shard.num_shards, n);
}

void RowStream::Seek(int64_t epoch, int64_t position) {
  epoch_ = epoch;
  position_ = position;
  // A window already held stays valid if it covers the new position; otherwise Next() finds
  // or restarts the producer at the right place.
}

void RowStream::Advance() {
  if (++position_ == ShardRows(epoch_)) {
    ++epoch_;
    position_ = 0;
  }
}

void RowStream::Skip() { Advance(); }

RowPosition RowStream::NextPosition() {
  RowPosition next{epoch_, position_};
  Advance();
  return next;
}

RowRef RowStream::Resolve(const RowPosition &p) {
  if (!has_current_ || !current_.Contains(p.epoch, p.position)) AcquireWindowFor(p.epoch, p.position);
  int64_t slot = p.position - current_.first_position;
  return {current_.window, slot, current_.window->rows[slot]};
}

void RowStream::AcquireWindowFor(int64_t epoch, int64_t position) {
  has_current_ = false;
  current_ = {};
  if (!producer_.joinable()) StartProducer(epoch, position);
  for (;;) {
    LoadedWindow next;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      consumer_starved_ = queue_.empty();
      if (consumer_starved_) window_pool_->Wake();
      queue_changed_.wait(lock, [&] { return !queue_.empty() || producer_done_; });
      consumer_starved_ = false;
      if (queue_.empty()) {
        lock.unlock();
        StopProducer();  // finished without an error: cannot happen, but never spin
        StartProducer(epoch, position);
        continue;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    queue_changed_.notify_all();
    if (next.error) {
      // Keep the error in the queue's place so every later call fails the same way.
      std::exception_ptr error = next.error;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_front(std::move(next));
      }
      std::rethrow_exception(error);
    }
    if (next.Contains(epoch, position)) {
      current_ = std::move(next);
      has_current_ = true;
      return;
    }
    if (!next.Before(epoch, position)) {  // the producer is ahead of us (after a Seek back)
      StopProducer();
      StartProducer(epoch, position);
    }
  }
}

void RowStream::StartProducer(int64_t epoch, int64_t position) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = false;
    producer_done_ = false;
    queue_.clear();
  }
  producer_ = std::thread([this, epoch, position] { ProducerLoop(epoch, position); });
}

void RowStream::StopProducer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  queue_changed_.notify_all();
  if (producer_.joinable()) producer_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  queue_.clear();
}

void RowStream::ProducerLoop(int64_t epoch, int64_t position) {
  const int64_t num_rows = source_->num_rows();
  try {
    auto plan = std::make_unique<EpochPlan>(num_rows, options_.sampler, options_.shard, epoch);
    int64_t window = plan->WindowOfPosition(position);
    // A window planned, its reads submitted to the I/O layer.
    struct Pending {
      int64_t epoch = 0;
      WindowPlan plan;
      std::unique_ptr<PreparedLoad> prepared;
      std::exception_ptr error;  // raised when this window is loaded, not before
    };
    auto prepare_next = [&] {
      while (window == plan->num_windows()) {
        ++epoch;
        plan = std::make_unique<EpochPlan>(num_rows, options_.sampler, options_.shard, epoch);
        window = 0;
      }
      Pending pending;
      pending.epoch = epoch;
      pending.plan = plan->Window(window++);
      try {
        pending.prepared = source_->Prepare(io_, pending.plan.rows);
      } catch (...) {
        pending.error = std::current_exception();
      }
      return pending;
    };
    Pending current = prepare_next();
    for (;;) {
      {
        // Load only when there is room: at most prefetch_windows windows ahead of the consumer.
        // Meanwhile the current window's reads are in flight.
        std::unique_lock<std::mutex> lock(mutex_);
        queue_changed_.wait(lock, [&] {
          return stop_ || static_cast<int>(queue_.size()) < options_.prefetch_windows;
        });
        if (stop_) break;
      }
      // The next window's reads go out before this one decodes: the disk works while the
      // decoders do.
      Pending ahead = prepare_next();
      LoadedWindow loaded;
      loaded.epoch = current.epoch;
      loaded.first_position = current.plan.first_position;
      // Blocks while 1 + prefetch_windows windows are alive (held here, by rows not yet handed
      // out, or by outputs sharing their memory): the memory bound. A window smaller than a
      // batch never waits: the batch across it holds the window before it, and needs the next.
      const int64_t full_rows = options_.sampler.block_rows * options_.sampler.window_blocks;
      const int64_t rows = static_cast<int64_t>(current.plan.rows.size());
      const bool small = rows < full_rows && rows < options_.batch_size;
      std::shared_ptr<Window> window_data = (small ? small_window_pool_ : window_pool_)->Acquire(
          [this] {
            std::lock_guard<std::mutex> lock(mutex_);
            return stop_;
          },
          [this] { return consumer_starved_.load(); });
      if (!window_data) break;
      window_data->rows = std::move(current.plan.rows);
      window_data->fields.resize(options_.field_dtypes.size());
      for (size_t f = 0; f < options_.field_dtypes.size(); ++f)
        window_data->fields[f].dtype = options_.field_dtypes[f];
      if (current.error) std::rethrow_exception(current.error);
      source_->Load(pool_, *current.prepared, *window_data);
      current.prepared.reset();  // its reads are done with
      loaded.window = std::move(window_data);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(std::move(loaded));
      }
      queue_changed_.notify_all();
      current = std::move(ahead);
    }
  } catch (...) {
    LoadedWindow failed;
    failed.error = std::current_exception();
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(failed));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    producer_done_ = true;
  }
  queue_changed_.notify_all();
}

}  // namespace biodali
