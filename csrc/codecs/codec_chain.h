// A chunk's codec chain: one array->bytes `bytes` codec followed by bytes->bytes codecs
// (compressors, checksums), itself an array->bytes codec. Built once per array (per chunk
// shape); decoding a chunk allocates nothing after a thread's first chunks.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "codecs/bytes_codec.h"
#include "codecs/codec.h"

namespace biodali::codecs {

class BloscCodec;

// Runs bytes->bytes `codecs` (metadata order) backwards over `src` when no step's decoded size
// is known ahead. Each step writes into whichever of the two scratch buffers does not hold its
// input (a step may return a view of its input: crc32c strips 4 bytes in place). Returns a
// view into `src` or one of the scratch buffers.
ConstBytes DecodeUnsized(std::span<const std::unique_ptr<BytesToBytesCodec>> codecs,
                         ConstBytes src, ScratchBuffer (&scratch)[2]);

class CodecChain final : public ArrayToBytesCodec {
 public:
  // `bytes_to_bytes` in metadata (encoding) order; decoding runs it backwards.
  CodecChain(BytesCodec array_to_bytes,
             std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes);

  // Decodes one encoded chunk into dst (exactly one chunk of elements). The last decoding
  // step writes straight into dst; earlier steps use per-thread scratch buffers.
  void Decode(ConstBytes src, Bytes dst) const override;

  // Decodes bytes [byte_begin, byte_begin + dst.size()) of one chunk (whole elements; the
  // chunk decodes to `chunk_nbytes`) from the whole encoded chunk `src`, native endian.
  // Checksums are verified over all of `src` first. How much work is saved depends on the
  // chain, see SupportsPartialDecode; other chains decode the whole chunk into a per-thread
  // scratch buffer and copy the range out.
  void DecodeRange(ConstBytes src, size_t chunk_nbytes, size_t byte_begin, Bytes dst) const;

  // DecodeRange for bytes [byte_begin, byte_end), handed to `sink` in cache-sized pieces
  // where the chain allows it (bytes -> blosc [-> crc32c], native byte order) and else in one.
  void DecodeRangeInPieces(ConstBytes src, size_t chunk_nbytes, size_t byte_begin, size_t byte_end,
                           DecodedBytesSink sink) const;

  // True when DecodeRange costs less than decoding the whole chunk: plain chains (the range
  // is a slice of the stored bytes, so a reader can read just that slice) and
  // bytes -> blosc [-> crc32c] (only the blosc blocks covering the range are decompressed).
  bool SupportsPartialDecode() const { return range_mode_ != RangeMode::kFullDecode; }
  // True when a range can be decoded from the blosc frame's header, block table and the blocks
  // it needs alone (blosc is the only bytes -> bytes codec: no checksum over the whole chunk),
  // so a reader may read just those parts of the stored chunk.
  bool SupportsSelectiveRead() const {
    return range_mode_ == RangeMode::kBlosc && bytes_to_bytes_.size() == 1;
  }

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
  enum class RangeMode { kPlain, kBlosc, kFullDecode };

  BytesCodec array_to_bytes_;
  std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes_;
  RangeMode range_mode_ = RangeMode::kFullDecode;
  const BloscCodec *blosc_ = nullptr;  // bytes_to_bytes_[0] when range_mode_ is kBlosc
};

}  // namespace biodali::codecs
