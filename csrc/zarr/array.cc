#include "zarr/array.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <shared_mutex>
#include <unordered_map>

#include "codecs/blosc_codec.h"
#include "codecs/buffer.h"
#include "common/error.h"
#include "zarr/array_spec.h"
#include "engine/io/local_file.h"

namespace biodali::zarr {
namespace {

using codecs::Bytes;
using codecs::ConstBytes;
using codecs::ScratchBuffer;
using io::FetchHold;
using io::FetchMode;
using io::LocalFile;
using io::StoredFile;

// Buffers reused by every chunk a thread reads, sized by the largest it has seen: after a
// thread's first chunks, reading allocates nothing. They hold at most one encoded and one
// decoded chunk per reader thread.
struct ThreadScratch {
  ScratchBuffer encoded;  // a chunk's bytes as read from disk
  ScratchBuffer decoded;  // ReadRegion: one decoded chunk before its slice is copied out
  std::string path;       // the chunk or shard file being read
};

ThreadScratch &Scratch() {
  thread_local ThreadScratch scratch;
  return scratch;
}

std::string FormatDims(std::span<const int64_t> dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += StrCat(i ? ", " : "", dims[i]);
  return out + "]";
}

// Copies the box `box` (element counts per dimension) from `src` (C-order array of shape
// src_shape, starting at src_start) into `dst` (shape dst_shape, starting at dst_start).
// Trailing dimensions that the box covers fully in both arrays are merged into one memcpy.
void CopyBox(const std::byte *src, const int64_t *src_shape, const int64_t *src_start,
             std::byte *dst, const int64_t *dst_shape, const int64_t *dst_start,
             const int64_t *box, int ndim, size_t elem_nbytes) {
  if (ndim == 0) {
    std::memcpy(dst, src, elem_nbytes);
    return;
  }
  int64_t src_stride[kMaxDims], dst_stride[kMaxDims];
  src_stride[ndim - 1] = dst_stride[ndim - 1] = 1;
  for (int d = ndim - 2; d >= 0; --d) {
    src_stride[d] = src_stride[d + 1] * src_shape[d + 1];
    dst_stride[d] = dst_stride[d + 1] * dst_shape[d + 1];
  }
  int inner = ndim - 1;
  int64_t run = box[inner];
  while (inner > 0 && box[inner] == src_shape[inner] && box[inner] == dst_shape[inner]) {
    --inner;
    run *= box[inner];
  }
  const size_t run_nbytes = static_cast<size_t>(run) * elem_nbytes;
  int64_t idx[kMaxDims] = {};  // position within the box over dimensions [0, inner)
  for (;;) {
    int64_t src_off = 0, dst_off = 0;
    for (int d = 0; d <= inner; ++d) {
      int64_t i = d < inner ? idx[d] : 0;
      src_off += (src_start[d] + i) * src_stride[d];
      dst_off += (dst_start[d] + i) * dst_stride[d];
    }
    std::memcpy(dst + dst_off * static_cast<int64_t>(elem_nbytes),
                src + src_off * static_cast<int64_t>(elem_nbytes), run_nbytes);
    int d = inner - 1;
    for (; d >= 0; --d) {
      if (++idx[d] < box[d]) break;
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

// A codec's error (which names only the problem) as one naming the file and, in a shard, the
// inner chunk.
[[noreturn]] void FailDecoding(const std::string &path, int64_t inner_chunk, const Error &e) {
  if (inner_chunk >= 0) FailAt(path, "inner chunk ", inner_chunk, ": ", e.what());
  FailAt(path, e.what());
}

class ArrayImpl final : public Array {
 public:
  ArrayImpl(std::string path, ArraySpec spec);

  const ArrayMetadata &metadata() const override { return spec_.metadata; }
  const std::string &path() const override { return path_; }
  std::vector<int64_t> read_grid_shape() const override { return read_grid_; }
  int64_t read_chunk_nbytes() const override { return read_chunk_nbytes_; }

  void DecodeReadChunk(std::span<const int64_t> coords, std::span<std::byte> dst) const override;
  void ReadRegion(std::span<const int64_t> start, std::span<const int64_t> count,
                  void *dst) const override;
  void DecodeReadChunkRange(int64_t chunk_index, int64_t element_begin, int64_t num_elements,
                            std::byte *dst) const override;
  void DecodeReadChunkRangeInPieces(int64_t chunk_index, int64_t element_begin, int64_t num_elements,
                                    codecs::DecodedBytesSink sink) const override;
  bool LocateReadChunk(std::span<const int64_t> coords, StoredChunk *chunk) const override;
  void DecodeFetchedRangeInPieces(int64_t chunk_index, const StoredChunk &chunk, ConstBytes encoded,
                                  bool mapped, int64_t element_begin, int64_t num_elements,
                                  codecs::DecodedBytesSink sink) const override;
  bool SupportsPartialDecode() const override { return read_chain_.SupportsPartialDecode(); }
  bool SupportsSelectiveRead() const override { return read_chain_.SupportsSelectiveRead(); }
  bool SelectiveSpan(ConstBytes head, int64_t element_begin, int64_t element_end, uint64_t *begin,
                     uint64_t *end) const override {
    if (!read_chain_.SupportsSelectiveRead()) return false;
    const size_t item = DTypeSize(spec_.metadata.dtype);
    size_t b = 0, e = 0;
    if (!codecs::BloscCodec::SelectiveSpan(head, static_cast<size_t>(element_begin) * item,
                                           static_cast<size_t>(element_end) * item, &b, &e))
      return false;
    *begin = b;
    *end = e;
    return true;
  }
  bool ReadEncodedReadChunk(std::span<const int64_t> coords,
                            std::vector<std::byte> *encoded) const override;
  void DecodeEncodedReadChunk(std::span<const std::byte> encoded,
                              std::span<std::byte> dst) const override;

 private:
  // Where a read chunk's encoded bytes are: the file and, for sharded arrays, the range.
  struct ChunkLocation {
    std::shared_ptr<const StoredFile> shard;  // sharded arrays only
    const StoredFile *file = nullptr;         // the shard, or the chunk file
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    int64_t inner_chunk = -1;  // position inside the shard, -1 when not sharded
  };

  void CheckReadChunk(std::span<const int64_t> coords, size_t dst_nbytes) const;
  // Writes the file path of the storage chunk (shard) at grid position `coords` into *out.
  void StorageChunkPath(const int64_t *coords, std::string *out) const;
  // Finds read chunk `coords` in its shard (path in Scratch().path); false when the shard is
  // missing or the inner chunk absent.
  bool LocateInnerChunk(std::span<const int64_t> coords, ChunkLocation *loc) const;
  // Finds read chunk `coords` (path in Scratch().path): sets loc->file to the file holding
  // it (the cached shard, or *chunk_file opened on the chunk file) and its byte range; false
  // when the chunk is missing (it reads as fill_value).
  bool Locate(std::span<const int64_t> coords, LocalFile *chunk_file, ChunkLocation *loc) const;
  // The shard's validated index, loaded on first use; nullptr when the shard file is missing.
  const codecs::ShardIndex *ShardIndexFor(int64_t shard_key, const std::string &path) const;
  // Decodes bytes [byte_begin, byte_begin + dst.size()) of the located read chunk into dst
  // (the whole chunk when dst holds read_chunk_nbytes_).
  void DecodeLocated(const ChunkLocation &loc, size_t byte_begin, Bytes dst) const;
  // The located chunk's encoded bytes: mapped (*hold keeps them) or read into scratch.
  ConstBytes EncodedBytes(const ChunkLocation &loc, bool whole, FetchHold *hold) const;
  // Decodes bytes [byte_begin, byte_end) of a chunk from its encoded bytes, handed to `sink`
  // in pieces; errors name `path` and the inner chunk.
  void DecodeEncodedInPieces(const std::string &path, int64_t inner_chunk, ConstBytes encoded,
                             size_t byte_begin, size_t byte_end, codecs::DecodedBytesSink sink) const;
  // Checks that elements [element_begin, +num_elements) lie in 1-D read chunk chunk_index.
  void CheckChunkRange(int64_t chunk_index, int64_t element_begin, int64_t num_elements) const;
  // An uncompressed chunk's stored bytes are its elements: Error unless it holds exactly those.
  void CheckPlainChunkNbytes(const std::string &path, int64_t inner_chunk, uint64_t nbytes) const;
  void Fill(Bytes dst) const;

  std::string path_;
  ArraySpec spec_;
  const codecs::CodecChain &read_chain_;
  int ndim_;
  int64_t read_chunk_nbytes_;
  std::vector<int64_t> read_grid_;
  std::vector<int64_t> storage_grid_;
  bool fill_is_zero_;

  mutable io::FileCache shard_files_{8};
  // Shard indices cost 16 bytes per inner chunk, so all of an array's indices stay cached
  // (the whole array's chunk count times 16 bytes); a missing shard is cached as nullopt.
  mutable std::shared_mutex index_mutex_;
  mutable std::unordered_map<int64_t, std::unique_ptr<const std::optional<codecs::ShardIndex>>>
      shard_indices_;
};

ArrayImpl::ArrayImpl(std::string path, ArraySpec spec)
    : path_(std::move(path)),
      spec_(std::move(spec)),
      read_chain_(spec_.codecs.read_chain()),
      ndim_(static_cast<int>(spec_.metadata.shape.size())) {
  const ArrayMetadata &md = spec_.metadata;
  read_chunk_nbytes_ = static_cast<int64_t>(DTypeSize(md.dtype));
  for (int d = 0; d < ndim_; ++d) {
    read_chunk_nbytes_ *= md.read_chunk_shape[d];
    read_grid_.push_back((md.shape[d] + md.read_chunk_shape[d] - 1) / md.read_chunk_shape[d]);
    storage_grid_.push_back((md.shape[d] + md.storage_chunk_shape[d] - 1) /
                            md.storage_chunk_shape[d]);
  }
  fill_is_zero_ = std::all_of(md.fill_value.begin(), md.fill_value.end(),
                              [](std::byte b) { return b == std::byte{0}; });
}

void ArrayImpl::Fill(Bytes dst) const {
  if (fill_is_zero_) {
    std::memset(dst.data(), 0, dst.size());
    return;
  }
  // Doubling copies: log2(n) memcpy calls instead of one per element.
  const size_t elem_nbytes = spec_.metadata.fill_value.size();
  std::memcpy(dst.data(), spec_.metadata.fill_value.data(), elem_nbytes);
  for (size_t done = elem_nbytes; done < dst.size(); done *= 2) {
    std::memcpy(dst.data() + done, dst.data(), std::min(done, dst.size() - done));
  }
}

void ArrayImpl::StorageChunkPath(const int64_t *coords, std::string *out) const {
  zarr::StorageChunkPath(path_, spec_.key_encoding, {coords, static_cast<size_t>(ndim_)}, out);
}

void ArrayImpl::CheckReadChunk(std::span<const int64_t> coords, size_t dst_nbytes) const {
  bool in_grid = coords.size() == static_cast<size_t>(ndim_);
  for (int d = 0; in_grid && d < ndim_; ++d) {
    in_grid = coords[d] >= 0 && coords[d] < read_grid_[d];
  }
  if (!in_grid) {
    FailAt(path_, "read chunk ", FormatDims(coords), " is outside the chunk grid ",
           FormatDims(read_grid_));
  }
  if (dst_nbytes != static_cast<size_t>(read_chunk_nbytes_)) {
    FailAt(path_, "destination holds ", dst_nbytes, " bytes, a read chunk needs ",
           read_chunk_nbytes_);
  }
}

const codecs::ShardIndex *ArrayImpl::ShardIndexFor(int64_t shard_key,
                                                   const std::string &path) const {
  {
    std::shared_lock<std::shared_mutex> lock(index_mutex_);
    auto it = shard_indices_.find(shard_key);
    if (it != shard_indices_.end()) return it->second->has_value() ? &**it->second : nullptr;
  }
  // Loaded outside the lock; two threads may both load one shard's index and the first
  // insert wins. A corrupt index is not cached, so every read of that shard reports it.
  auto entry = std::make_unique<std::optional<codecs::ShardIndex>>();
  if (auto file = shard_files_.Get(shard_key, path)) {
    const codecs::ShardingCodec &sharding = *spec_.codecs.sharding;
    uint64_t offset = 0, nbytes = 0;
    try {
      sharding.IndexRange(file->nbytes(), &offset, &nbytes);
    } catch (const Error &e) {
      FailAt(path, e.what());
    }
    Bytes encoded = Scratch().encoded.Get(nbytes);
    file->ReadAt(offset, encoded);
    try {
      entry->emplace(sharding.DecodeIndex(encoded, file->nbytes()));
    } catch (const Error &e) {
      FailAt(path, e.what());
    }
  }
  std::unique_lock<std::shared_mutex> lock(index_mutex_);
  auto it = shard_indices_.try_emplace(shard_key, std::move(entry)).first;
  return it->second->has_value() ? &**it->second : nullptr;
}

bool ArrayImpl::LocateInnerChunk(std::span<const int64_t> coords, ChunkLocation *loc) const {
  const std::vector<int64_t> &per_shard = spec_.codecs.sharding->chunks_per_shard();
  int64_t shard_coords[kMaxDims];
  int64_t shard_key = 0;
  loc->inner_chunk = 0;
  for (int d = 0; d < ndim_; ++d) {
    shard_coords[d] = coords[d] / per_shard[d];
    shard_key = shard_key * storage_grid_[d] + shard_coords[d];
    loc->inner_chunk = loc->inner_chunk * per_shard[d] + coords[d] % per_shard[d];
  }
  std::string &path = Scratch().path;
  StorageChunkPath(shard_coords, &path);
  const codecs::ShardIndex *index = ShardIndexFor(shard_key, path);
  if (index == nullptr || !index->Find(loc->inner_chunk, &loc->offset, &loc->nbytes)) {
    return false;
  }
  loc->shard = shard_files_.Get(shard_key, path);
  if (!loc->shard) FailAt(path, "shard file disappeared while it was being read");
  loc->file = loc->shard.get();
  return true;
}

bool ArrayImpl::Locate(std::span<const int64_t> coords, LocalFile *chunk_file,
                       ChunkLocation *loc) const {
  if (spec_.metadata.sharded) return LocateInnerChunk(coords, loc);
  std::string &path = Scratch().path;
  StorageChunkPath(coords.data(), &path);
  if (!chunk_file->Open(path)) return false;
  loc->nbytes = chunk_file->nbytes();
  loc->file = chunk_file;
  return true;
}

bool ArrayImpl::LocateReadChunk(std::span<const int64_t> coords, StoredChunk *chunk) const {
  CheckReadChunk(coords, static_cast<size_t>(read_chunk_nbytes_));
  ChunkLocation loc;
  auto chunk_file = std::make_shared<LocalFile>();
  if (!Locate(coords, chunk_file.get(), &loc)) return false;
  chunk->range.file = loc.shard ? loc.shard : std::shared_ptr<const StoredFile>(std::move(chunk_file));
  chunk->range.offset = loc.offset;
  chunk->range.nbytes = loc.nbytes;
  chunk->inner_chunk = loc.inner_chunk;
  return true;
}

ConstBytes ArrayImpl::EncodedBytes(const ChunkLocation &loc, bool whole, FetchHold *hold) const {
  // Decoders read the chunk's bytes straight from the page cache (pread's copy costs more
  // than the page-table work of mapping on small VMs). A whole chunk is read in full, so its
  // pages are mapped up front; a range of a blosc frame touches only the header, the block
  // table and the blocks that hold it, so pages are mapped as touched.
  if (whole || read_chain_.SupportsSelectiveRead()) {
    bool mapped = false;
    ConstBytes bytes = loc.file->Fetch(loc.offset, loc.nbytes, FetchMode::kMapLazy, hold, &mapped);
    if (mapped && whole) io::PopulateRead(bytes);
    return bytes;
  }
  Bytes buffer = Scratch().encoded.Get(loc.nbytes);
  loc.file->ReadAt(loc.offset, buffer);
  return buffer;
}

void ArrayImpl::DecodeLocated(const ChunkLocation &loc, size_t byte_begin, Bytes dst) const {
  const std::string &path = Scratch().path;
  const size_t chunk_nbytes = static_cast<size_t>(read_chunk_nbytes_);
  if (read_chain_.is_plain()) {
    // Uncompressed: the stored bytes are the elements, so read just the wanted ones straight
    // into dst.
    CheckPlainChunkNbytes(path, loc.inner_chunk, loc.nbytes);
    loc.file->ReadAt(loc.offset + byte_begin, dst);
    read_chain_.FinishInPlace(dst);
    return;
  }
  FetchHold hold;
  const ConstBytes encoded = EncodedBytes(loc, /*whole=*/dst.size() == chunk_nbytes, &hold);
  try {
    if (dst.size() == chunk_nbytes) {
      read_chain_.Decode(encoded, dst);
    } else {
      read_chain_.DecodeRange(encoded, chunk_nbytes, byte_begin, dst);
    }
  } catch (const Error &e) {
    FailDecoding(path, loc.inner_chunk, e);
  }
}

void ArrayImpl::DecodeReadChunk(std::span<const int64_t> coords, std::span<std::byte> dst) const {
  CheckReadChunk(coords, dst.size());
  ChunkLocation loc;
  LocalFile chunk_file;
  if (!Locate(coords, &chunk_file, &loc)) return Fill(dst);
  DecodeLocated(loc, 0, dst);
}

void ArrayImpl::CheckChunkRange(int64_t chunk_index, int64_t element_begin,
                                int64_t num_elements) const {
  if (ndim_ != 1) {
    FailAt(path_, "DecodeReadChunkRange needs a 1-D array; this one has ", ndim_,
           " dimensions");
  }
  const int64_t chunk_len = spec_.metadata.read_chunk_shape[0];
  if (chunk_index < 0 || chunk_index >= read_grid_[0] || element_begin < 0 ||
      num_elements < 0 || num_elements > chunk_len - element_begin) {
    FailAt(path_, "elements [", element_begin, ", ", element_begin + num_elements,
           ") of read chunk ", chunk_index, " are outside the chunk (", chunk_len,
           " elements) or the chunk grid (", read_grid_[0], " chunks)");
  }
}

void ArrayImpl::CheckPlainChunkNbytes(const std::string &path, int64_t inner_chunk,
                                      uint64_t nbytes) const {
  if (nbytes == static_cast<uint64_t>(read_chunk_nbytes_)) return;
  FailAt(path, inner_chunk >= 0 ? StrCat("inner chunk ", inner_chunk) : "chunk file", " holds ",
         nbytes, " bytes, expected ", read_chunk_nbytes_, " (truncated or wrong chunk size)");
}

void ArrayImpl::DecodeReadChunkRange(int64_t chunk_index, int64_t element_begin,
                                     int64_t num_elements, std::byte *dst) const {
  CheckChunkRange(chunk_index, element_begin, num_elements);
  if (num_elements == 0) return;
  const size_t elem_nbytes = DTypeSize(spec_.metadata.dtype);
  Bytes out(dst, static_cast<size_t>(num_elements) * elem_nbytes);
  const int64_t coords[1] = {chunk_index};
  ChunkLocation loc;
  LocalFile chunk_file;
  if (!Locate(coords, &chunk_file, &loc)) return Fill(out);
  DecodeLocated(loc, static_cast<size_t>(element_begin) * elem_nbytes, out);
}

void ArrayImpl::DecodeReadChunkRangeInPieces(int64_t chunk_index, int64_t element_begin,
                                             int64_t num_elements, codecs::DecodedBytesSink sink) const {
  CheckChunkRange(chunk_index, element_begin, num_elements);
  if (num_elements == 0) return;
  const size_t elem_nbytes = DTypeSize(spec_.metadata.dtype);
  const size_t byte_begin = static_cast<size_t>(element_begin) * elem_nbytes;
  const size_t byte_end = byte_begin + static_cast<size_t>(num_elements) * elem_nbytes;
  const int64_t coords[1] = {chunk_index};
  ChunkLocation loc;
  LocalFile chunk_file;
  const bool found = Locate(coords, &chunk_file, &loc);
  if (found && !read_chain_.is_plain()) {
    FetchHold hold;
    const ConstBytes encoded =
        EncodedBytes(loc, /*whole=*/byte_begin == 0 && byte_end == static_cast<size_t>(read_chunk_nbytes_), &hold);
    DecodeEncodedInPieces(Scratch().path, loc.inner_chunk, encoded, byte_begin, byte_end, sink);
    return;
  }
  // Missing (fill value) or uncompressed chunks: read the range into scratch, hand it over.
  Bytes range = Scratch().decoded.Get(byte_end - byte_begin);
  if (!found) {
    Fill(range);
  } else {
    DecodeLocated(loc, byte_begin, range);
  }
  sink(byte_begin, range);
}

void ArrayImpl::DecodeEncodedInPieces(const std::string &path, int64_t inner_chunk,
                                      ConstBytes encoded, size_t byte_begin, size_t byte_end,
                                      codecs::DecodedBytesSink sink) const {
  // Errors from the sink are the caller's and already name what they are about.
  bool sink_failed = false;
  auto guarded_sink = [&](size_t offset, ConstBytes bytes) {
    try {
      sink(offset, bytes);
    } catch (...) {
      sink_failed = true;
      throw;
    }
  };
  try {
    read_chain_.DecodeRangeInPieces(encoded, static_cast<size_t>(read_chunk_nbytes_), byte_begin,
                                    byte_end, guarded_sink);
  } catch (const Error &e) {
    if (sink_failed) throw;
    FailDecoding(path, inner_chunk, e);
  }
}

void ArrayImpl::DecodeFetchedRangeInPieces(int64_t chunk_index, const StoredChunk &chunk,
                                           ConstBytes encoded, bool mapped, int64_t element_begin,
                                           int64_t num_elements, codecs::DecodedBytesSink sink) const {
  CheckChunkRange(chunk_index, element_begin, num_elements);
  if (num_elements == 0) return;
  const size_t elem_nbytes = DTypeSize(spec_.metadata.dtype);
  const size_t chunk_nbytes = static_cast<size_t>(read_chunk_nbytes_);
  const size_t byte_begin = static_cast<size_t>(element_begin) * elem_nbytes;
  const size_t byte_end = byte_begin + static_cast<size_t>(num_elements) * elem_nbytes;
  const std::string &path = chunk.range.file->path();
  if (mapped) chunk.range.file->BeforeReadingMapped(chunk.range.offset, chunk.range.nbytes);
  if (read_chain_.is_plain()) {
    CheckPlainChunkNbytes(path, chunk.inner_chunk, encoded.size());
    // Copied: finishing (byte order) works in place, and the fetched bytes are read-only.
    Bytes range = Scratch().decoded.Get(byte_end - byte_begin);
    std::memcpy(range.data(), encoded.data() + byte_begin, range.size());
    read_chain_.FinishInPlace(range);
    sink(byte_begin, range);
    return;
  }
  if (mapped && byte_begin == 0 && byte_end == chunk_nbytes) io::PopulateRead(encoded);
  DecodeEncodedInPieces(path, chunk.inner_chunk, encoded, byte_begin, byte_end, sink);
}

bool ArrayImpl::ReadEncodedReadChunk(std::span<const int64_t> coords,
                                     std::vector<std::byte> *encoded) const {
  CheckReadChunk(coords, static_cast<size_t>(read_chunk_nbytes_));
  ChunkLocation loc;
  LocalFile chunk_file;
  if (!Locate(coords, &chunk_file, &loc)) return false;
  encoded->resize(loc.nbytes);
  loc.file->ReadAt(loc.offset, Bytes(encoded->data(), encoded->size()));
  return true;
}

void ArrayImpl::DecodeEncodedReadChunk(std::span<const std::byte> encoded,
                                       std::span<std::byte> dst) const {
  if (dst.size() != static_cast<size_t>(read_chunk_nbytes_)) {
    FailAt(path_, "destination holds ", dst.size(), " bytes, a read chunk needs ",
           read_chunk_nbytes_);
  }
  try {
    read_chain_.Decode(encoded, dst);
  } catch (const Error &e) {
    FailAt(path_, e.what());
  }
}

void ArrayImpl::ReadRegion(std::span<const int64_t> start, std::span<const int64_t> count,
                           void *dst) const {
  const ArrayMetadata &md = spec_.metadata;
  bool valid = start.size() == static_cast<size_t>(ndim_) && count.size() == start.size();
  for (int d = 0; valid && d < ndim_; ++d) {
    valid = start[d] >= 0 && count[d] >= 0 && count[d] <= md.shape[d] - start[d];
  }
  if (!valid) {
    FailAt(path_, "region start ", FormatDims(start), " count ", FormatDims(count),
           " is outside the array shape ", FormatDims(md.shape));
  }
  for (int d = 0; d < ndim_; ++d) {
    if (count[d] == 0) return;
  }
  const int64_t *chunk_shape = md.read_chunk_shape.data();
  int64_t first[kMaxDims], last[kMaxDims], grid[kMaxDims];
  for (int d = 0; d < ndim_; ++d) {
    first[d] = grid[d] = start[d] / chunk_shape[d];
    last[d] = (start[d] + count[d] - 1) / chunk_shape[d];
  }
  const size_t elem_nbytes = DTypeSize(md.dtype);
  // A whole chunk is contiguous in dst when the region spans the chunk's full extent in every
  // dimension but the first (always so for 1-D arrays); such chunks decode in place.
  bool rows_contiguous = true;
  for (int d = 1; d < ndim_; ++d) rows_contiguous &= count[d] == chunk_shape[d];
  const int64_t dst_row_nbytes = read_chunk_nbytes_ / (ndim_ > 0 ? chunk_shape[0] : 1);
  Bytes chunk = Scratch().decoded.Get(static_cast<size_t>(read_chunk_nbytes_));
  for (;;) {
    int64_t src_start[kMaxDims], dst_start[kMaxDims], box[kMaxDims];
    bool whole_chunk = true;
    for (int d = 0; d < ndim_; ++d) {
      int64_t chunk_lo = grid[d] * chunk_shape[d];
      int64_t lo = std::max(start[d], chunk_lo);
      int64_t hi = std::min(start[d] + count[d], chunk_lo + chunk_shape[d]);
      src_start[d] = lo - chunk_lo;
      dst_start[d] = lo - start[d];
      box[d] = hi - lo;
      whole_chunk &= box[d] == chunk_shape[d];
    }
    const std::span<const int64_t> coords(grid, static_cast<size_t>(ndim_));
    if (whole_chunk && rows_contiguous) {
      int64_t offset = ndim_ > 0 ? dst_start[0] * dst_row_nbytes : 0;
      DecodeReadChunk(coords, Bytes(static_cast<std::byte *>(dst) + offset,
                                    static_cast<size_t>(read_chunk_nbytes_)));
    } else if (ndim_ == 1) {
      // Part of a 1-D chunk: decode just that part (fewer blosc blocks, or a shorter read when
      // uncompressed) straight into dst.
      DecodeReadChunkRange(grid[0], src_start[0], box[0],
                           static_cast<std::byte *>(dst) + dst_start[0] * elem_nbytes);
    } else {
      DecodeReadChunk(coords, chunk);
      CopyBox(chunk.data(), chunk_shape, src_start, static_cast<std::byte *>(dst),
              count.data(), dst_start, box, ndim_, elem_nbytes);
    }
    int d = ndim_ - 1;
    for (; d >= 0; --d) {
      if (++grid[d] <= last[d]) break;
      grid[d] = first[d];
    }
    if (d < 0) return;
  }
}

}  // namespace

std::shared_ptr<const Array> Array::Open(const std::string &path) {
  return std::make_shared<ArrayImpl>(path, ParseArraySpec(path));
}

}  // namespace biodali::zarr
