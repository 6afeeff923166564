// Codec interfaces (decoding only: biodali reads stores, it never writes them).
//
// Codecs are configured once when an array is opened and are then immutable, so one instance
// is shared by all reader threads. A codec reports problems by throwing biodali::Error with the
// problem alone ("zstd: ..."); the caller knows which file it read and prefixes the path.
#pragma once

#include <cstdint>

#include "codecs/buffer.h"
#include "common/function_ref.h"

namespace biodali::codecs {

// Receives a range of a chunk's decoded bytes a piece at a time, in order: `bytes` are the
// decoded bytes from byte `offset` of the chunk on, viewable only during the call. Decoders
// hand out pieces small enough to stay in L1, so a caller that scatters them (rows into
// their slots) reads them from cache instead of from a whole decoded chunk in memory.
using DecodedBytesSink = FunctionRef<void(size_t offset, ConstBytes bytes)>;

// bytes -> bytes: compressors and checksums.
class BytesToBytesCodec {
 public:
  virtual ~BytesToBytesCodec() = default;
  virtual const char *name() const = 0;

  // Decodes `src` into `dst`, which must be exactly the decoded size; throws if the encoded
  // data decodes to any other size. This is the zero-copy path: the chain's last step writes
  // straight into the caller's chunk.
  virtual void DecodeInto(ConstBytes src, Bytes dst) const = 0;

  // Decodes `src` when the caller cannot know the decoded size. The result lives in *scratch,
  // or inside `src` for codecs that only strip framing (crc32c), so nothing is copied there.
  virtual ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const = 0;

  // Encoded size minus decoded size when it is a constant (checksums), else -1. Lets a shard
  // reader compute where a fixed-size index lies in the file.
  virtual int64_t fixed_overhead_nbytes() const { return -1; }
};

// array -> bytes: turns one chunk's encoded bytes into its elements (C order, native endian).
// `dst` holds exactly one whole chunk.
class ArrayToBytesCodec {
 public:
  virtual ~ArrayToBytesCodec() = default;
  virtual void Decode(ConstBytes src, Bytes dst) const = 0;
};

}  // namespace biodali::codecs
