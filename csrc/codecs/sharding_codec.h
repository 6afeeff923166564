// The zarr v3 `sharding_indexed` codec. A shard file holds inner chunks, each encoded with the
// inner chain, plus an index of (offset, nbytes) uint64 pairs, one per inner chunk in C order,
// encoded with the index chain at the start or end of the file.
//
// Reading is partial: the reader fetches the index range once (IndexRange), decodes it into a
// ShardIndex, then fetches and decodes only the inner chunks it needs. The codec does no I/O,
// so the same code serves files, memory and the decode-ceiling benchmark.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codecs/codec_chain.h"

namespace biodali::codecs {

enum class IndexLocation { kStart, kEnd };

// One shard's decoded index. Every entry is checked against the shard file size when the
// index is built, so Find's results can be sliced without further bounds checks.
class ShardIndex {
 public:
  static constexpr uint64_t kAbsent = ~uint64_t{0};  // offset and nbytes of a missing chunk

  // `entries`: 2 values (offset, nbytes) per inner chunk, native endian. Throws Error naming
  // the first entry that lies outside a file of `shard_nbytes` bytes.
  ShardIndex(std::vector<uint64_t> entries, uint64_t shard_nbytes);

  int64_t num_chunks() const { return static_cast<int64_t>(entries_.size() / 2); }

  // Byte range of inner chunk `chunk` (C-order position in the shard); false when absent
  // (the chunk reads as fill_value).
  bool Find(int64_t chunk, uint64_t *offset, uint64_t *nbytes) const {
    *offset = entries_[2 * chunk];
    *nbytes = entries_[2 * chunk + 1];
    return *offset != kAbsent;
  }

 private:
  std::vector<uint64_t> entries_;
};

class ShardingCodec {
 public:
  // Throws Error if the index chain does not have a fixed encoded size (only bytes + crc32c
  // do; anything else would make the index impossible to locate without reading the file).
  // `inner` is null for string arrays, whose inner chain is a StringCodecChain kept beside
  // this codec (ParsedCodecs::string_chain); only the index is handled here then.
  ShardingCodec(std::vector<int64_t> chunks_per_shard, std::unique_ptr<CodecChain> inner,
                std::unique_ptr<CodecChain> index, IndexLocation index_location);

  const CodecChain &inner() const { return *inner_; }  // numeric arrays only
  const std::vector<int64_t> &chunks_per_shard() const { return chunks_per_shard_; }
  int64_t num_inner_chunks() const { return num_inner_chunks_; }
  int64_t index_encoded_nbytes() const { return index_encoded_nbytes_; }

  // Where the encoded index lies in a shard file of `shard_nbytes` bytes. Throws Error when
  // the file is too short to hold it (a truncated shard).
  void IndexRange(uint64_t shard_nbytes, uint64_t *offset, uint64_t *nbytes) const;

  // Decodes (checksum included) and validates the bytes read from IndexRange.
  ShardIndex DecodeIndex(ConstBytes encoded_index, uint64_t shard_nbytes) const;

  std::string Describe() const;

 private:
  std::vector<int64_t> chunks_per_shard_;
  int64_t num_inner_chunks_;
  std::unique_ptr<CodecChain> inner_;
  std::unique_ptr<CodecChain> index_;
  IndexLocation index_location_;
  int64_t index_encoded_nbytes_;
};

}  // namespace biodali::codecs
