// The byte-store interface every row source reads through: a file (or, later, an object
// behind HTTP range requests or S3) read by byte ranges from many threads at once. Sources
// name the ranges a window needs; the IoScheduler (io_scheduler.h) fetches them ahead of the
// decoders, many at a time. A local file is one implementation (local_file.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace biodali::io {

using ConstBytes = std::span<const std::byte>;
using Bytes = std::span<std::byte>;

// Keeps fetched bytes alive: nothing for a view into a file's whole mapping, else the
// buffer or mapping they live in.
struct FetchHold {
  std::shared_ptr<const void> owner;
};

// How a store fetches a range. Local files: `kMapLazy` hands out a view of the file's
// mapping at once (pages fault in as the decoder touches them: for decoders reading now),
// `kMapResident` first brings the range into the page cache, many pages in flight, and waits
// for it (for reading ahead: no copy, and pages already cached cost one residency check),
// `kRead` reads it into a buffer of its own. A remote store reads into a buffer in every mode.
enum class FetchMode { kMapLazy, kMapResident, kRead };

class StoredFile {
 public:
  virtual ~StoredFile() = default;
  virtual const std::string &path() const = 0;
  virtual uint64_t nbytes() const = 0;

  // Copies exactly dst.size() bytes at `offset` (blocking). Error naming the path when the
  // file ends early or the read fails.
  virtual void ReadAt(uint64_t offset, Bytes dst) const = 0;

  // Fetches [offset, offset + nbytes) for decoders that read it soon (blocking: this does
  // the I/O; called on the scheduler's I/O threads). The bytes stay valid while *hold and
  // this file live. Errors as ReadAt. `mapped` is set when the bytes are a view of a file
  // mapping (readers may then fault in its pages in one call before reading them all).
  virtual ConstBytes Fetch(uint64_t offset, uint64_t nbytes, FetchMode mode, FetchHold *hold,
                           bool *mapped) const = 0;

  // Fetch without waiting for storage, when that can be done: true and *bytes set when the
  // range can be handed out as it is (local files: a view of pages already in the page cache,
  // or any range in kMapLazy mode); false when it needs I/O. Called on the submitting thread,
  // so that ranges already cached cost no hand-off to an I/O thread.
  virtual bool FetchIfReady(uint64_t offset, uint64_t nbytes, FetchMode mode, ConstBytes *bytes,
                            bool *mapped) const {
    (void)offset, (void)nbytes, (void)mode, (void)bytes, (void)mapped;
    return false;
  }

  // Readers of mapped bytes fetched a while ago call this right before reading them: an
  // Error naming the file unless it still holds [offset, offset + nbytes) (a mapped page past
  // the end of a file truncated meanwhile would be a SIGBUS, not an error), and the pages
  // they are about to map count toward dropping mapped pages from the resident set.
  virtual void BeforeReadingMapped(uint64_t offset, uint64_t nbytes) const = 0;
};

// Opens `path` for reading: nullptr when it does not exist (a missing chunk or shard reads as
// the fill value); Error naming it when it cannot be read. Where another store plugs in (with
// zarr::Array's unsharded chunk files, opened as local files on the stack to spare an
// allocation per chunk): paths with a scheme (s3://, https://) get an Error saying they are
// not supported yet.
// `many_reads`: the file will be read many times (a shard): a local one is mapped whole.
std::shared_ptr<const StoredFile> OpenStoredFile(const std::string &path, bool many_reads);

// Faults in the page-table entries of a mapped range in one call (MADV_POPULATE_READ): for
// bytes a decoder will read in full. A hint: failure only means pages fault in one by one.
void PopulateRead(ConstBytes bytes);

}  // namespace biodali::io
