#include "engine/sampler.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace biodali {

uint64_t MixKey(uint64_t a, uint64_t b) {
  // splitmix64 finaliser over a combined word: well-spread keys from small integers.
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void ShuffleInPlace(std::vector<int64_t> &values, uint64_t key) {
  // Fisher-Yates with Lemire's unbiased bounded integers from a splitmix64 stream.
  uint64_t state = key;
  auto next = [&state]() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (size_t i = values.size(); i > 1; --i) {
    uint64_t bound = i;
    __uint128_t m = static_cast<__uint128_t>(next()) * bound;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < bound) {
      uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        m = static_cast<__uint128_t>(next()) * bound;
        low = static_cast<uint64_t>(m);
      }
    }
    size_t j = static_cast<size_t>(m >> 64);
    std::swap(values[i - 1], values[j]);
  }
}

EpochPlan::EpochPlan(int64_t num_rows, const SamplerOptions &sampler, const ShardOptions &shard,
                     int64_t epoch)
    : sampler_(sampler) {
  if (sampler.block_rows <= 0 || sampler.window_blocks <= 0)
    throw Error("chunk_size and preload_chunks must be positive");
  int v = VirtualShard(shard, epoch);
  int64_t shard_begin = ShardBegin(v, shard.num_shards, num_rows);
  int64_t shard_end = ShardBegin(v + 1, shard.num_shards, num_rows);
  if (shard.stick_to_shard) {
    // The order permutes only this shard's rows; the shard reads all of it.
    row_begin_ = shard_begin;
    row_end_ = shard_end;
    slice_begin_ = 0;
    slice_end_ = shard_end - shard_begin;
    key_ = MixKey(MixKey(sampler.seed, static_cast<uint64_t>(epoch)), 1 + shard.shard_id);
  } else {
    row_begin_ = 0;
    row_end_ = num_rows;
    slice_begin_ = shard_begin;
    slice_end_ = shard_end;
    key_ = MixKey(MixKey(sampler.seed, static_cast<uint64_t>(epoch)), 0);
  }
  int64_t range_rows = row_end_ - row_begin_;
  int64_t num_blocks = (range_rows + sampler.block_rows - 1) / sampler.block_rows;
  block_order_.resize(num_blocks);
  std::iota(block_order_.begin(), block_order_.end(), 0);
  if (sampler.shuffle) ShuffleInPlace(block_order_, key_);
  int64_t num_order_windows = (num_blocks + sampler.window_blocks - 1) / sampler.window_blocks;
  window_starts_.resize(num_order_windows + 1);
  window_starts_[0] = 0;
  for (int64_t w = 0; w < num_order_windows; ++w) {
    int64_t rows = 0;
    int64_t b_end = std::min(num_blocks, (w + 1) * sampler.window_blocks);
    for (int64_t b = w * sampler.window_blocks; b < b_end; ++b) rows += BlockRows(block_order_[b]);
    window_starts_[w + 1] = window_starts_[w] + rows;
  }
  if (slice_end_ > slice_begin_) {
    first_window_ = std::upper_bound(window_starts_.begin(), window_starts_.end(), slice_begin_) -
                    window_starts_.begin() - 1;
    last_window_ = std::upper_bound(window_starts_.begin(), window_starts_.end(), slice_end_ - 1) -
                   window_starts_.begin();
  }
}

int64_t EpochPlan::BlockRows(int64_t block) const {
  int64_t begin = block * sampler_.block_rows;
  return std::min(sampler_.block_rows, row_end_ - row_begin_ - begin);
}

int64_t EpochPlan::WindowOfPosition(int64_t position) const {
  int64_t order_position = slice_begin_ + position;
  int64_t w = std::upper_bound(window_starts_.begin(), window_starts_.end(), order_position) -
              window_starts_.begin() - 1;
  return w - first_window_;
}

WindowPlan EpochPlan::Window(int64_t window) const {
  int64_t w = first_window_ + window;
  WindowPlan plan;
  plan.rows.reserve(window_starts_[w + 1] - window_starts_[w]);
  int64_t num_blocks = static_cast<int64_t>(block_order_.size());
  int64_t b_end = std::min(num_blocks, (w + 1) * sampler_.window_blocks);
  for (int64_t b = w * sampler_.window_blocks; b < b_end; ++b) {
    int64_t block = block_order_[b];
    int64_t first_row = row_begin_ + block * sampler_.block_rows;
    for (int64_t r = 0; r < BlockRows(block); ++r) plan.rows.push_back(first_row + r);
  }
  if (sampler_.shuffle) ShuffleInPlace(plan.rows, MixKey(key_, 2 + static_cast<uint64_t>(w)));
  // Clip to this shard's slice of positions.
  int64_t keep_begin = std::max<int64_t>(0, slice_begin_ - window_starts_[w]);
  int64_t keep_end = std::min<int64_t>(plan.rows.size(), slice_end_ - window_starts_[w]);
  plan.rows.erase(plan.rows.begin() + keep_end, plan.rows.end());
  plan.rows.erase(plan.rows.begin(), plan.rows.begin() + keep_begin);
  plan.first_position = window_starts_[w] + keep_begin - slice_begin_;
  return plan;
}

}  // namespace biodali
