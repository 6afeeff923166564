// Local files as StoredFiles: positional reads of exact byte ranges, views of a whole-file
// mapping, reading ahead through the page cache, and a small cache of open shard files.
// Errors name the file.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/stored_file.h"

namespace biodali::io {

class WholeFileMapping;

class LocalFile final : public StoredFile {
 public:
  LocalFile() = default;
  ~LocalFile() override { Close(); }
  LocalFile(LocalFile &&other) noexcept
      : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)), nbytes_(other.nbytes_),
        whole_(std::exchange(other.whole_, nullptr)) {}
  LocalFile &operator=(LocalFile &&other) noexcept {
    if (this != &other) {
      Close();
      path_ = std::move(other.path_);
      fd_ = std::exchange(other.fd_, -1);
      nbytes_ = other.nbytes_;
      whole_ = std::exchange(other.whole_, nullptr);
    }
    return *this;
  }

  // Returns false when `path` does not exist (a missing chunk or shard reads as fill_value);
  // Error naming the path for any other failure. `map_whole`: map the whole file now (for
  // shards, read many times): fetches then return views into that mapping instead of mapping
  // each range, which spares an mmap and a munmap (with its TLB shootdown on every core) per read.
  bool Open(const std::string &path, bool map_whole = false);

  const std::string &path() const override { return path_; }
  uint64_t nbytes() const override { return nbytes_; }

  // pread: safe from many threads at once.
  void ReadAt(uint64_t offset, Bytes dst) const override;

  // Map modes check first that the file still holds the range, so a file truncated after
  // Open raises an Error instead of a SIGBUS. Mapping rather than reading skips the copy
  // pread makes, which costs more than lz4-decoding the bytes on small VMs.
  ConstBytes Fetch(uint64_t offset, uint64_t nbytes, FetchMode mode, FetchHold *hold,
                   bool *mapped) const override;
  void BeforeReadingMapped(uint64_t offset, uint64_t nbytes) const override;
  bool FetchIfReady(uint64_t offset, uint64_t nbytes, FetchMode mode, ConstBytes *bytes,
                    bool *mapped) const override;

 private:
  void Close();
  void CheckHolds(uint64_t offset, uint64_t nbytes) const;
  // Brings [offset, offset + nbytes) into the page cache, waiting until every page is there.
  void MakeResident(const std::byte *mapped, uint64_t offset, uint64_t nbytes) const;

  std::string path_;
  int fd_ = -1;
  uint64_t nbytes_ = 0;
  WholeFileMapping *whole_ = nullptr;  // with map_whole; owned
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
  std::shared_ptr<const StoredFile> Get(int64_t key, const std::string &path);

 private:
  std::mutex mutex_;
  size_t capacity_;
  // Tiny (capacity ~8), so a vector scanned linearly beats a map; most recently used last.
  std::vector<std::pair<int64_t, std::shared_ptr<const StoredFile>>> entries_;
};

}  // namespace biodali::io
