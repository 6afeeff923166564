// A growable byte buffer reused across chunks. Unlike std::vector it never zero-fills, so
// handing out a larger view costs nothing once capacity has been reached.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>

namespace biodali::codecs {

using ConstBytes = std::span<const std::byte>;
using Bytes = std::span<std::byte>;

class ScratchBuffer {
 public:
  // Returns a view of `num_bytes` bytes with unspecified contents; reallocates only to grow.
  Bytes Get(size_t num_bytes) {
    if (num_bytes > capacity_) Reallocate(num_bytes, /*keep_nbytes=*/0);
    return {data_.get(), num_bytes};
  }

  // Grows to at least `num_bytes`, keeping the first `keep_nbytes` bytes (streaming decoders).
  Bytes Grow(size_t num_bytes, size_t keep_nbytes) {
    if (num_bytes > capacity_) Reallocate(num_bytes, keep_nbytes);
    return {data_.get(), capacity_};
  }

  size_t capacity() const { return capacity_; }
  const std::byte *data() const { return data_.get(); }

 private:
  void Reallocate(size_t num_bytes, size_t keep_nbytes) {
    // Geometric growth so that a slowly growing sequence of chunk sizes settles quickly.
    size_t new_capacity = capacity_ + capacity_ / 2;
    if (new_capacity < num_bytes) new_capacity = num_bytes;
    std::unique_ptr<std::byte[]> fresh(new std::byte[new_capacity]);
    if (keep_nbytes > 0) std::memcpy(fresh.get(), data_.get(), keep_nbytes);
    data_ = std::move(fresh);
    capacity_ = new_capacity;
  }

  std::unique_ptr<std::byte[]> data_;
  size_t capacity_ = 0;
};

}  // namespace biodali::codecs
