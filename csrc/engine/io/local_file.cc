#include "engine/io/local_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/error.h"

namespace biodali::io {

// The pages of a whole-file mapping count in the process's resident set once touched: over an
// epoch that would be every shard's compressed bytes, though they are only page cache. So the
// touched pages of all whole mappings are dropped (the page cache keeps them) each time reads
// could have mapped kDropAfterNbytes more: mappings add at most about that to the RSS, and
// the drop (one madvise and TLB shootdown per touched file) comes every few dozen reads
// instead of at every one. A fault maps the whole page-cache folio it hits (up to 2 MiB on
// current kernels), so a read counts as its range widened to folio boundaries.
class WholeFileMapping {
 public:
  WholeFileMapping(void *base, size_t nbytes);
  ~WholeFileMapping();
  WholeFileMapping(const WholeFileMapping &) = delete;
  WholeFileMapping &operator=(const WholeFileMapping &) = delete;

  const std::byte *data() const { return static_cast<const std::byte *>(base_); }
  size_t nbytes() const { return nbytes_; }
  // Counts a read of [offset, offset + nbytes) toward the next drop.
  void NoteTouched(uint64_t offset, uint64_t nbytes);
  void DropTouchedPages();

 private:
  void *base_;
  size_t nbytes_;
  std::atomic<bool> touched_{false};
};

namespace {

constexpr size_t kDropAfterNbytes = size_t{32} << 20;
constexpr uint64_t kMaxFolioNbytes = uint64_t{2} << 20;
constexpr uint64_t kAdvisePieceNbytes = uint64_t{4} << 20;

// The pages of a mapped range, for mincore.
struct PageSpan {
  uintptr_t base;  // the first page's address
  uint64_t num_pages;
  PageSpan(const std::byte *data, uint64_t nbytes) {
    static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    base = reinterpret_cast<uintptr_t>(data) / page * page;
    num_pages = (reinterpret_cast<uintptr_t>(data) + nbytes - base + page - 1) / page;
  }
  // The first page at or after `from` that is not in the page cache: num_pages when there is
  // none, kUnknown when mincore fails.
  static constexpr uint64_t kUnknown = UINT64_MAX;
  uint64_t FirstMissing(uint64_t from) const {
    static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    thread_local std::vector<unsigned char> resident;
    resident.resize(num_pages - from);
    if (::mincore(reinterpret_cast<void *>(base + from * page), (num_pages - from) * page,
                  resident.data()) != 0)
      return kUnknown;
    uint64_t missing = from;
    while (missing < num_pages && (resident[missing - from] & 1)) ++missing;
    return missing;
  }
};

class MappedPages {
 public:
  void Add(WholeFileMapping *mapping) {
    std::lock_guard<std::mutex> lock(mutex_);
    mappings_.push_back(mapping);
  }
  void Remove(WholeFileMapping *mapping) {
    std::lock_guard<std::mutex> lock(mutex_);
    mappings_.erase(std::find(mappings_.begin(), mappings_.end(), mapping));
  }
  void Touched(size_t nbytes) {
    if (touched_nbytes_.fetch_add(nbytes, std::memory_order_relaxed) + nbytes < kDropAfterNbytes) return;
    std::unique_lock<std::mutex> lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock()) return;  // another thread is dropping them
    touched_nbytes_.store(0, std::memory_order_relaxed);
    for (WholeFileMapping *mapping : mappings_) mapping->DropTouchedPages();
  }

 private:
  std::mutex mutex_;
  std::vector<WholeFileMapping *> mappings_;
  std::atomic<size_t> touched_nbytes_{0};
};

// Never destroyed: cached files may be closed during static destruction at exit.
MappedPages &Registry() {
  static MappedPages *registry = new MappedPages;
  return *registry;
}

}  // namespace

std::shared_ptr<const StoredFile> OpenStoredFile(const std::string &path, bool many_reads) {
  const size_t scheme = path.find("://");
  if (scheme != std::string::npos && scheme > 0 &&
      path.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789+-.") >= scheme)
    FailAt(path, "reading through ", path.substr(0, scheme), ":// is not supported yet; use a local path");
  auto file = std::make_shared<LocalFile>();
  if (!file->Open(path, many_reads)) return nullptr;
  return file;
}

void PopulateRead(ConstBytes bytes) {
#ifdef MADV_POPULATE_READ
  if (bytes.empty()) return;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t data = reinterpret_cast<uintptr_t>(bytes.data());
  const uintptr_t begin = data / page * page;
  ::madvise(reinterpret_cast<void *>(begin), data + bytes.size() - begin, MADV_POPULATE_READ);
#else
  (void)bytes;
#endif
}

WholeFileMapping::WholeFileMapping(void *base, size_t nbytes) : base_(base), nbytes_(nbytes) {
  Registry().Add(this);
}

WholeFileMapping::~WholeFileMapping() {
  Registry().Remove(this);  // waits for a drop in progress
  ::munmap(base_, nbytes_);
}

void WholeFileMapping::NoteTouched(uint64_t offset, uint64_t nbytes) {
  touched_.store(true, std::memory_order_relaxed);
  const uint64_t begin = offset / kMaxFolioNbytes * kMaxFolioNbytes;
  const uint64_t end = (offset + nbytes + kMaxFolioNbytes - 1) / kMaxFolioNbytes * kMaxFolioNbytes;
  Registry().Touched(static_cast<size_t>(end - begin));
}

void WholeFileMapping::DropTouchedPages() {
  // Readers of this file at the same moment fault the pages in again from the page cache.
  if (touched_.exchange(false, std::memory_order_relaxed)) ::madvise(base_, nbytes_, MADV_DONTNEED);
}

bool LocalFile::Open(const std::string &path, bool map_whole) {
  Close();
  path_ = path;
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
  if (map_whole && nbytes_ > 0) {
    // Address space only: pages are mapped in as ranges are read. If it fails (address-space
    // limits), ranges are mapped one by one instead.
    void *base = ::mmap(nullptr, nbytes_, PROT_READ, MAP_SHARED, fd_, 0);
    if (base != MAP_FAILED) whole_ = new WholeFileMapping(base, nbytes_);
  }
  return true;
}

void LocalFile::Close() {
  delete std::exchange(whole_, nullptr);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void LocalFile::ReadAt(uint64_t offset, Bytes dst) const {
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      FailAt(path_, "read failed at offset ", offset + done, ": ", std::strerror(errno));
    }
    if (n == 0) {
      FailAt(path_, "file ended at ", offset + done, " bytes while reading ", dst.size(),
             " bytes at offset ", offset, " (truncated?)");
    }
    done += static_cast<size_t>(n);
  }
}

void LocalFile::CheckHolds(uint64_t offset, uint64_t nbytes) const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) FailAt(path_, "cannot stat: ", std::strerror(errno));
  if (static_cast<uint64_t>(st.st_size) < offset + nbytes) {
    FailAt(path_, "file ended at ", st.st_size, " bytes while reading ", nbytes,
           " bytes at offset ", offset, " (truncated?)");
  }
}

void LocalFile::BeforeReadingMapped(uint64_t offset, uint64_t nbytes) const {
  CheckHolds(offset, nbytes);
  if (whole_ != nullptr && offset + nbytes <= whole_->nbytes()) whole_->NoteTouched(offset, nbytes);
}

bool LocalFile::FetchIfReady(uint64_t offset, uint64_t nbytes, FetchMode mode, ConstBytes *bytes,
                             bool *mapped) const {
  if (mode == FetchMode::kRead || whole_ == nullptr || nbytes == 0 || offset + nbytes > whole_->nbytes())
    return false;
  const std::byte *data = whole_->data() + offset;
  if (mode == FetchMode::kMapResident) {
    // One mincore: all pages cached (a warm page cache) -> no I/O to wait for. Pages past the
    // end of a file truncated meanwhile are not cached: such ranges take the I/O path, which
    // reports the truncation.
    const PageSpan pages(data, nbytes);
    if (pages.FirstMissing(0) != pages.num_pages) return false;
  }
  *bytes = ConstBytes(data, static_cast<size_t>(nbytes));
  *mapped = true;
  return true;
}

namespace {
// How MakeResident asks the kernel for the pages (BIODALI_RESIDENT_BY, for benchmarks):
// fadvise (WILLNEED: reads queued, nothing copied), pread (read into a scratch buffer: the
// kernel's own readahead, large folios, one copy) or populate (MADV_POPULATE_READ on the
// mapping: faults with read-around).
enum class ResidentBy { kFadvise, kPread, kPopulate };
ResidentBy ResidentMethod() {
  static const ResidentBy method = [] {
    const char *v = std::getenv("BIODALI_RESIDENT_BY");
    if (v != nullptr && std::strcmp(v, "pread") == 0) return ResidentBy::kPread;
    if (v != nullptr && std::strcmp(v, "populate") == 0) return ResidentBy::kPopulate;
    return ResidentBy::kFadvise;
  }();
  return method;
}
}  // namespace

void LocalFile::MakeResident(const std::byte *mapped, uint64_t offset, uint64_t nbytes) const {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  switch (ResidentMethod()) {
    case ResidentBy::kPread: {
      thread_local std::unique_ptr<std::byte[]> scratch(new std::byte[kAdvisePieceNbytes]);
      for (uint64_t at = offset; at < offset + nbytes; at += kAdvisePieceNbytes)
        ReadAt(at, Bytes(scratch.get(), std::min(kAdvisePieceNbytes, offset + nbytes - at)));
      return;
    }
    case ResidentBy::kPopulate:
      PopulateRead(ConstBytes(mapped, nbytes));
      break;
    case ResidentBy::kFadvise:
      // Ask for every missing page at once: the kernel queues the reads (many in flight) and
      // returns. In pieces, because one call reads at most the device's readahead size.
      for (uint64_t at = offset; at < offset + nbytes; at += kAdvisePieceNbytes) {
        ::posix_fadvise(fd_, static_cast<off_t>(at),
                        static_cast<off_t>(std::min(kAdvisePieceNbytes, offset + nbytes - at)),
                        POSIX_FADV_WILLNEED);
      }
      break;
  }
  // Then wait: mincore tells which pages are not read yet (cached pages cost only this
  // check), and a 1-byte pread of such a page blocks until its read completes (or reads it,
  // if it was evicted meanwhile). Pages are scanned forward once, so this ends.
  const PageSpan pages(mapped, nbytes);
  const uint64_t base_offset = offset - (reinterpret_cast<uintptr_t>(mapped) - pages.base);
  for (uint64_t first = 0; first < pages.num_pages;) {
    const uint64_t missing = pages.FirstMissing(first);
    // All there; or mincore failed, and residency is a hint only: decoders fault pages in.
    if (missing >= pages.num_pages) return;
    std::byte one;
    const uint64_t at = std::max(offset, base_offset + missing * page);
    for (;;) {
      ssize_t n = ::pread(fd_, &one, 1, static_cast<off_t>(at));
      if (n >= 0) break;
      if (errno != EINTR) FailAt(path_, "read failed at offset ", at, ": ", std::strerror(errno));
    }
    first = missing + 1;
  }
}

ConstBytes LocalFile::Fetch(uint64_t offset, uint64_t nbytes, FetchMode mode, FetchHold *hold,
                            bool *mapped) const {
  *mapped = false;
  if (mode == FetchMode::kRead) {
    std::shared_ptr<std::byte[]> buffer(new std::byte[std::max<uint64_t>(nbytes, 1)]);
    ReadAt(offset, Bytes(buffer.get(), nbytes));
    hold->owner = buffer;
    return {buffer.get(), nbytes};
  }
  CheckHolds(offset, nbytes);
  if (nbytes == 0) return {};
  const std::byte *data;
  if (whole_ != nullptr && offset + nbytes <= whole_->nbytes()) {
    data = whole_->data() + offset;
    // Reading ahead maps no page (it asks the page cache); the decoder counts its own.
    if (mode == FetchMode::kMapLazy) whole_->NoteTouched(offset, nbytes);
  } else {
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t aligned = offset / page * page;
    const size_t mapped_nbytes = static_cast<size_t>(offset + nbytes - aligned);
    void *base = ::mmap(nullptr, mapped_nbytes, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(aligned));
    if (base == MAP_FAILED)
      FailAt(path_, "cannot map ", nbytes, " bytes at offset ", offset, ": ", std::strerror(errno));
    hold->owner = std::shared_ptr<const void>(base, [mapped_nbytes](const void *p) {
      ::munmap(const_cast<void *>(p), mapped_nbytes);
    });
    data = static_cast<const std::byte *>(base) + (offset - aligned);
  }
  if (mode == FetchMode::kMapResident) MakeResident(data, offset, nbytes);
  *mapped = true;
  return {data, static_cast<size_t>(nbytes)};
}

std::shared_ptr<const StoredFile> FileCache::Get(int64_t key, const std::string &path) {
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
  // Missing shards are not cached here: the caller's shard-index cache remembers them.
  auto file = OpenStoredFile(path, /*many_reads=*/true);
  if (!file) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto &entry : entries_) {
    if (entry.first == key) return entry.second;
  }
  if (entries_.size() >= capacity_) entries_.erase(entries_.begin());
  entries_.emplace_back(key, file);
  return file;
}

}  // namespace biodali::io
