// Local-file reads for chunk and shard files: positional reads of exact byte ranges, and a
// small cache of open shard files. Errors name the file.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "codecs/buffer.h"

namespace biodali::zarr {

class WholeFileMapping;

class ReadOnlyFile {
 public:
  ReadOnlyFile() = default;
  ~ReadOnlyFile() { Close(); }
  ReadOnlyFile(ReadOnlyFile &&other) noexcept
      : fd_(std::exchange(other.fd_, -1)), nbytes_(other.nbytes_),
        whole_(std::exchange(other.whole_, nullptr)) {}
  ReadOnlyFile &operator=(ReadOnlyFile &&other) noexcept {
    if (this != &other) {
      Close();
      fd_ = std::exchange(other.fd_, -1);
      nbytes_ = other.nbytes_;
      whole_ = std::exchange(other.whole_, nullptr);
    }
    return *this;
  }

  // Returns false when `path` does not exist (a missing chunk or shard reads as fill_value);
  // Error naming the path for any other failure. A value type, so that reading one chunk
  // file costs no heap allocation. `map_whole`: map the whole file now (for shards, read many
  // times): Map() then returns views into that mapping instead of mapping each range, which
  // spares an mmap and a munmap (with its TLB shootdown on every core) per read.
  bool Open(const std::string &path, bool map_whole = false);

  uint64_t nbytes() const { return nbytes_; }

  // Reads exactly dst.size() bytes at `offset` (pread: safe from many threads at once).
  // `path` is only used in the Error raised when the file ends early or the read fails.
  void ReadAt(uint64_t offset, codecs::Bytes dst, const std::string &path) const;

  // Maps bytes [offset, offset + nbytes) read-only, for decoders that read them once: from
  // the page cache this skips the copy pread makes (which costs more than lz4 decoding it on
  // small VMs). Checks the file still holds the range first, so a file truncated after Open
  // raises an Error instead of a SIGBUS. `populate`: fault every page in now (the whole range
  // will be read) rather than page by page on first touch.
  class Mapping;
  Mapping Map(uint64_t offset, uint64_t nbytes, bool populate, const std::string &path) const;

 private:
  void Close();

  int fd_ = -1;
  uint64_t nbytes_ = 0;
  WholeFileMapping *whole_ = nullptr;  // with map_whole; owned
};

// A mapped byte range: its own mapping (unmapped on destruction), or a view into the file's
// whole mapping.
class ReadOnlyFile::Mapping {
 public:
  Mapping() = default;
  Mapping(void *owned_base, size_t owned_nbytes, const std::byte *data, size_t nbytes)
      : owned_base_(owned_base), owned_nbytes_(owned_nbytes), data_(data), nbytes_(nbytes) {}
  ~Mapping() { Unmap(); }
  Mapping(Mapping &&other) noexcept
      : owned_base_(std::exchange(other.owned_base_, nullptr)), owned_nbytes_(other.owned_nbytes_),
        data_(other.data_), nbytes_(other.nbytes_) {}
  Mapping &operator=(Mapping &&other) noexcept {
    if (this != &other) {
      Unmap();
      owned_base_ = std::exchange(other.owned_base_, nullptr);
      owned_nbytes_ = other.owned_nbytes_;
      data_ = other.data_;
      nbytes_ = other.nbytes_;
    }
    return *this;
  }
  codecs::ConstBytes bytes() const { return {data_, nbytes_}; }

 private:
  void Unmap();
  void *owned_base_ = nullptr;
  size_t owned_nbytes_ = 0;
  const std::byte *data_ = nullptr;
  size_t nbytes_ = 0;
};

// Keeps the most recently used shard files open. A shard is read many times (its index once,
// then one range per inner chunk a batch needs), and each open() is a metadata round trip
// that costs more than the read on network filesystems. The bound keeps an array with
// thousands of shards from exhausting file descriptors; a file evicted while a reader still
// uses it stays open until that reader drops its shared_ptr. Unsharded chunk files are read
// once each, so they are opened and closed per chunk instead of going through this cache.
class FileCache {
 public:
  explicit FileCache(size_t capacity) : capacity_(capacity) { entries_.reserve(capacity); }

  // The open file for `key` (a shard's position in the shard grid), opening `path` on a miss;
  // nullptr when the file does not exist.
  std::shared_ptr<const ReadOnlyFile> Get(int64_t key, const std::string &path);

 private:
  std::mutex mutex_;
  size_t capacity_;
  // Tiny (capacity ~8), so a vector scanned linearly beats a map; most recently used last.
  std::vector<std::pair<int64_t, std::shared_ptr<const ReadOnlyFile>>> entries_;
};

}  // namespace biodali::zarr
