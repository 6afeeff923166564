#include "zarr/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace biodali::zarr {

bool ReadOnlyFile::Open(const std::string &path) {
  Close();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    FailAt(path, "cannot open: ", std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    FailAt(path, "cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    FailAt(path, "not a regular file");
  }
  fd_ = fd;
  nbytes_ = static_cast<uint64_t>(st.st_size);
  return true;
}

void ReadOnlyFile::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void ReadOnlyFile::ReadAt(uint64_t offset, codecs::Bytes dst, const std::string &path) const {
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      FailAt(path, "read failed at offset ", offset + done, ": ", std::strerror(errno));
    }
    if (n == 0) {
      FailAt(path, "file ended at ", offset + done, " bytes while reading ", dst.size(),
             " bytes at offset ", offset, " (truncated?)");
    }
    done += static_cast<size_t>(n);
  }
}

ReadOnlyFile::Mapping ReadOnlyFile::Map(uint64_t offset, uint64_t nbytes, bool populate,
                                        const std::string &path) const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) FailAt(path, "cannot stat: ", std::strerror(errno));
  if (static_cast<uint64_t>(st.st_size) < offset + nbytes) {
    FailAt(path, "file ended at ", st.st_size, " bytes while reading ", nbytes,
           " bytes at offset ", offset, " (truncated?)");
  }
  if (nbytes == 0) return {};
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t aligned = offset / page * page;
  const size_t mapped_nbytes = static_cast<size_t>(offset + nbytes - aligned);
  void *base = ::mmap(nullptr, mapped_nbytes, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0),
                      fd_, static_cast<off_t>(aligned));
  if (base == MAP_FAILED) FailAt(path, "cannot map ", nbytes, " bytes at offset ", offset, ": ", std::strerror(errno));
  return Mapping(base, mapped_nbytes, static_cast<size_t>(offset - aligned), static_cast<size_t>(nbytes));
}

void ReadOnlyFile::Mapping::Unmap() {
  if (base_ != nullptr) ::munmap(base_, mapped_nbytes_);
  base_ = nullptr;
}

std::shared_ptr<const ReadOnlyFile> FileCache::Get(int64_t key, const std::string &path) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i].first == key) {
        auto file = entries_[i].second;
        if (i + 1 != entries_.size()) {  // move to the most-recent end
          auto entry = std::move(entries_[i]);
          entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
          entries_.push_back(std::move(entry));
        }
        return file;
      }
    }
  }
  // Open outside the lock so a slow open does not stall readers of other shards. Two threads
  // racing on one shard may both open it; the later one returns the cached file and closes its own.
  auto file = std::make_shared<ReadOnlyFile>();
  // Missing shards are not cached here: the caller's shard-index cache remembers them.
  if (!file->Open(path)) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto &entry : entries_) {
    if (entry.first == key) return entry.second;
  }
  if (entries_.size() >= capacity_) entries_.erase(entries_.begin());
  entries_.emplace_back(key, file);
  return file;
}

}  // namespace biodali::zarr
