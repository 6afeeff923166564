// Block-shuffled sampling with annbatch's meaning, split into shards.
//
// The rows of one epoch form an order: blocks of `block_rows` contiguous rows, block order
// permuted per epoch, every `window_blocks` consecutive blocks of that order gathered into a
// window whose rows are permuted again. A shard reads a contiguous slice of positions of that
// order, so each epoch the shards are disjoint and cover every row, and a window (the I/O unit)
// is cut only at slice ends. Everything is a pure function of (seed, epoch, shard): nothing here
// reads data, and a checkpoint can jump to any position without replaying I/O.
#pragma once

#include <cstdint>
#include <vector>

namespace biodali {

struct SamplerOptions {
  int64_t block_rows = 512;    // annbatch `chunk_size`
  int64_t window_blocks = 32;  // annbatch `preload_nchunks`
  bool shuffle = false;
  uint64_t seed = 0;
};

struct ShardOptions {
  int num_shards = 1;
  int shard_id = 0;
  // true: a shard keeps the same rows every epoch (only their order changes);
  // false: shard slices rotate every epoch (DALI's convention) over a fresh global order.
  bool stick_to_shard = false;
};

// DALI's shard boundaries (same formula as dali::start_index), kept here so csrc/ needs no DALI.
inline int64_t ShardBegin(int64_t shard, int64_t num_shards, int64_t num_rows) {
  return num_rows * shard / num_shards;
}

// Which slice of the order a shard reads in a given epoch.
inline int VirtualShard(const ShardOptions &shard, int64_t epoch) {
  return shard.stick_to_shard ? shard.shard_id
                              : static_cast<int>((shard.shard_id + epoch) % shard.num_shards);
}

// Rows of one window, in the order they are emitted.
struct WindowPlan {
  int64_t first_position = 0;  // position of rows[0] within the shard-epoch stream
  std::vector<int64_t> rows;
};

// The stream of rows one shard reads in one epoch.
class EpochPlan {
 public:
  EpochPlan(int64_t num_rows, const SamplerOptions &sampler, const ShardOptions &shard,
            int64_t epoch);

  int64_t num_positions() const { return slice_end_ - slice_begin_; }
  int64_t num_windows() const { return last_window_ - first_window_; }
  // Index (0-based within this plan) of the window holding stream position `position`.
  int64_t WindowOfPosition(int64_t position) const;
  WindowPlan Window(int64_t window) const;

 private:
  int64_t BlockRows(int64_t block) const;

  SamplerOptions sampler_;
  int64_t row_begin_ = 0, row_end_ = 0;      // rows the order permutes
  int64_t slice_begin_ = 0, slice_end_ = 0;  // positions of the order this shard reads
  uint64_t key_ = 0;                         // RNG key for this (seed, epoch, order)
  std::vector<int64_t> block_order_;         // permuted block indices
  std::vector<int64_t> window_starts_;       // position where each window of the order begins
  int64_t first_window_ = 0, last_window_ = 0;
};

// Counter-based random numbers: the same (key, counter) gives the same value on every
// platform, unlike std:: distributions.
uint64_t MixKey(uint64_t a, uint64_t b);
void ShuffleInPlace(std::vector<int64_t> &values, uint64_t key);

}  // namespace biodali
