// A chunk's codec chain: one array->bytes `bytes` codec followed by bytes->bytes codecs
// (compressors, checksums), itself an array->bytes codec. Built once per array (per chunk
// shape); decoding a chunk allocates nothing after a thread's first chunks.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "codecs/bytes_codec.h"
#include "codecs/codec.h"

namespace biodali::codecs {

class CodecChain final : public ArrayToBytesCodec {
 public:
  // `bytes_to_bytes` in metadata (encoding) order; decoding runs it backwards.
  CodecChain(BytesCodec array_to_bytes,
             std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes);

  // Decodes one encoded chunk into dst (exactly one chunk of elements). The last decoding
  // step writes straight into dst; earlier steps use per-thread scratch buffers.
  void Decode(ConstBytes src, Bytes dst) const override;

  // True when an encoded chunk is just its elements (no bytes->bytes codecs): a reader then
  // reads the file straight into the destination and calls FinishInPlace.
  bool is_plain() const { return bytes_to_bytes_.empty(); }
  void FinishInPlace(Bytes chunk) const { array_to_bytes_.FinishInPlace(chunk); }

  // Encoded size of a chunk of `decoded_nbytes` if every codec adds a fixed overhead (plain
  // bytes plus checksums, as shard indices are encoded), else -1.
  int64_t FixedEncodedNbytes(int64_t decoded_nbytes) const;

  // "bytes -> zstd -> crc32c", for messages.
  std::string Describe() const;

 private:
  BytesCodec array_to_bytes_;
  std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes_;
};

}  // namespace biodali::codecs
