// One zarr array (format 2 or 3, sharded or not) opened for concurrent reading.
//
// Metadata is parsed once in Open(); the codec chain is prepared once per chunk shape; reading
// a chunk parses no JSON. Reading is thread-safe: per-thread scratch buffers, shard indices
// cached after first use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "codecs/codec.h"
#include "common/dtype.h"
#include "engine/io/io_scheduler.h"

namespace biodali::zarr {

struct ArrayMetadata {
  int zarr_format = 0;
  std::vector<int64_t> shape;
  // The unit decoded on its own: the inner chunk shape for sharded arrays, else the chunk shape.
  std::vector<int64_t> read_chunk_shape;
  // The unit stored in one file: the shard shape for sharded arrays, else the chunk shape.
  std::vector<int64_t> storage_chunk_shape;
  DType dtype = DType::kUInt8;
  std::vector<std::byte> fill_value;  // one element, native endian
  bool sharded = false;
};

// Where one read chunk's encoded bytes are stored.
struct StoredChunk {
  io::ByteRange range;       // the chunk file, or the inner chunk's bytes in its shard
  int64_t inner_chunk = -1;  // position inside the shard; -1 when not sharded
};

class Array {
 public:
  virtual ~Array() = default;

  // Opens the array stored in directory `path`. Throws Error naming the path for: missing
  // metadata, unsupported dtype / codec / order / chunk grid, malformed JSON.
  static std::shared_ptr<const Array> Open(const std::string &path);

  virtual const ArrayMetadata &metadata() const = 0;
  virtual const std::string &path() const = 0;

  // Number of read chunks along each dimension (ceil(shape / read_chunk_shape)).
  virtual std::vector<int64_t> read_grid_shape() const = 0;

  // Decodes the read chunk at grid position `coords` into `dst`, which must hold exactly
  // prod(read_chunk_shape) elements (C order, native endian; edge chunks are full size as
  // stored). A missing chunk (or missing shard / absent inner chunk) reads as fill_value.
  // Throws Error naming the file and problem on truncated/corrupt data or checksum mismatch.
  virtual void DecodeReadChunk(std::span<const int64_t> coords, std::span<std::byte> dst) const = 0;

  // Reads the hyper-rectangle [start, start + count) into dst (C order, native endian, stored
  // dtype), decoding each read chunk it touches once.
  virtual void ReadRegion(std::span<const int64_t> start, std::span<const int64_t> count,
                          void *dst) const = 0;

  // 1-D arrays only (Error otherwise): decodes elements [element_begin, element_begin +
  // num_elements) of read chunk `chunk_index` into dst (native endian, stored dtype). The
  // range must lie inside the chunk as stored (read_chunk_shape[0] elements, edge chunks
  // included). A missing chunk reads as fill_value; errors as DecodeReadChunk (checksums are
  // verified over the whole stored chunk). Thread-safe like DecodeReadChunk.
  virtual void DecodeReadChunkRange(int64_t chunk_index, int64_t element_begin,
                                    int64_t num_elements, std::byte *dst) const = 0;

  // DecodeReadChunkRange handing the decoded bytes to `sink` in pieces, in order (offsets are
  // bytes from the chunk's start), instead of into one buffer: with blosc chains the pieces
  // are unshuffled into L1-sized scratch, so a caller scattering them never writes and
  // re-reads a whole decoded chunk. An exception the sink throws passes through unchanged.
  virtual void DecodeReadChunkRangeInPieces(int64_t chunk_index, int64_t element_begin,
                                            int64_t num_elements,
                                            codecs::DecodedBytesSink sink) const = 0;

  // Finds read chunk `coords` (the shard's index is read and cached on first use): false
  // when it is missing (it reads as fill_value). Errors as DecodeReadChunk. For reading
  // through the I/O layer: fetch chunk->range, then DecodeFetchedRangeInPieces.
  virtual bool LocateReadChunk(std::span<const int64_t> coords, StoredChunk *chunk) const = 0;

  // DecodeReadChunkRangeInPieces of 1-D read chunk `chunk_index` from its encoded bytes,
  // fetched from the range LocateReadChunk gave (`mapped`: they are a view of a file mapping,
  // whose pages are faulted in at once when the whole chunk is decoded).
  virtual void DecodeFetchedRangeInPieces(int64_t chunk_index, const StoredChunk &chunk,
                                          codecs::ConstBytes encoded, bool mapped,
                                          int64_t element_begin, int64_t num_elements,
                                          codecs::DecodedBytesSink sink) const = 0;

  // For reading part of a 1-D chunk: when decoding elements [element_begin, element_end)
  // reads only the frame's header, block table and [*begin, *end) of the stored chunk (bytes ->
  // blosc chains), true with that span (offsets within the stored chunk), told from the chunk's
  // first bytes `head` (kSelectiveHeadNbytes of them, or all if fewer). False: all of it.
  virtual bool SelectiveSpan(codecs::ConstBytes head, int64_t element_begin, int64_t element_end,
                             uint64_t *begin, uint64_t *end) const = 0;
  static constexpr uint64_t kSelectiveHeadNbytes = 4096;
  virtual bool SupportsSelectiveRead() const = 0;

  // True when DecodeReadChunkRange does less work than DecodeReadChunk for a part of a chunk:
  // uncompressed chunks (only the range is read) and bytes -> blosc [-> crc32c] chains (only
  // the blosc blocks covering the range are decompressed). Otherwise DecodeReadChunkRange
  // decodes the whole chunk into a per-thread scratch buffer and copies the range out.
  virtual bool SupportsPartialDecode() const = 0;

  // Bytes of one decoded read chunk: prod(read_chunk_shape) * dtype size.
  virtual int64_t read_chunk_nbytes() const = 0;

  // Hooks for measuring decode speed apart from I/O (the "decode ceiling" benchmark):
  // ReadEncodedReadChunk copies the still-encoded bytes of read chunk `coords` (for sharded
  // arrays, the inner chunk's byte range) into *encoded and returns false when the chunk is
  // missing or absent; DecodeEncodedReadChunk decodes such bytes into dst (one whole read
  // chunk), exactly as DecodeReadChunk would after reading them.
  virtual bool ReadEncodedReadChunk(std::span<const int64_t> coords,
                                    std::vector<std::byte> *encoded) const = 0;
  virtual void DecodeEncodedReadChunk(std::span<const std::byte> encoded,
                                      std::span<std::byte> dst) const = 0;
};

}  // namespace biodali::zarr
