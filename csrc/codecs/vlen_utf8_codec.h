// String chunks: the `vlen-utf8` array->bytes codec (zarr v3 codec and v2 filter, as
// numcodecs.VLenUTF8 writes it) and the chain that decodes a string chunk.
//
// Encoded chunk: uint32 LE item count, then per item a uint32 LE byte length and the UTF-8
// bytes. Edge chunks are stored whole (padded with the fill value), so a chunk holds as many
// items as the chunk shape; the caller keeps only those inside the array.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codecs/codec.h"

namespace biodali::codecs {

class VlenUtf8Codec {
 public:
  // Appends the first `num_valid` items of `src` to *out. The chunk must hold `num_items`
  // items (the chunk shape) or exactly `num_valid` (writers that do not pad edge chunks);
  // throws Error ("vlen-utf8: ...") on a count mismatch, truncated data or trailing bytes.
  // The bytes are not checked to be valid UTF-8.
  static void Decode(ConstBytes src, int64_t num_items, int64_t num_valid,
                     std::vector<std::string> *out);
};

// vlen-utf8 followed by bytes->bytes codecs (compressors, checksums), built once per array.
class StringCodecChain {
 public:
  // `bytes_to_bytes` in metadata (encoding) order; decoding runs it backwards.
  explicit StringCodecChain(std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes)
      : bytes_to_bytes_(std::move(bytes_to_bytes)) {}

  // Decodes one encoded chunk of `num_items` items, appending the first `num_valid` to *out.
  void Decode(ConstBytes src, int64_t num_items, int64_t num_valid,
              std::vector<std::string> *out) const;

  // "vlen-utf8 -> zstd", for messages.
  std::string Describe() const;

 private:
  std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes_;
};

}  // namespace biodali::codecs
