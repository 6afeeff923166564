#include "codecs/sharding_codec.h"

#include "common/error.h"

namespace biodali::codecs {

ShardIndex::ShardIndex(std::vector<uint64_t> entries, uint64_t shard_nbytes)
    : entries_(std::move(entries)) {
  for (size_t i = 0; i + 1 < entries_.size(); i += 2) {
    uint64_t offset = entries_[i], nbytes = entries_[i + 1];
    if (offset == kAbsent && nbytes == kAbsent) continue;
    // Written as two comparisons so that offset + nbytes cannot overflow.
    if (offset > shard_nbytes || nbytes > shard_nbytes - offset) {
      throw Error(StrCat("shard index entry ", i / 2, " (offset ", offset, ", nbytes ", nbytes,
                         ") extends past the end of the shard file (", shard_nbytes,
                         " bytes): truncated or corrupt shard"));
    }
  }
}

ShardingCodec::ShardingCodec(std::vector<int64_t> chunks_per_shard,
                             std::unique_ptr<CodecChain> inner, std::unique_ptr<CodecChain> index,
                             IndexLocation index_location)
    : chunks_per_shard_(std::move(chunks_per_shard)),
      num_inner_chunks_(1),
      inner_(std::move(inner)),
      index_(std::move(index)),
      index_location_(index_location) {
  for (int64_t n : chunks_per_shard_) num_inner_chunks_ *= n;
  index_encoded_nbytes_ = index_->FixedEncodedNbytes(num_inner_chunks_ * 16);
  if (index_encoded_nbytes_ < 0) {
    throw Error(StrCat("sharding_indexed: index_codecs '", index_->Describe(),
                       "' do not have a fixed size (only bytes and crc32c are supported)"));
  }
}

void ShardingCodec::IndexRange(uint64_t shard_nbytes, uint64_t *offset, uint64_t *nbytes) const {
  uint64_t index_nbytes = static_cast<uint64_t>(index_encoded_nbytes_);
  if (shard_nbytes < index_nbytes) {
    throw Error(StrCat("shard file is ", shard_nbytes, " bytes, shorter than its ",
                       index_nbytes, "-byte index (truncated shard)"));
  }
  *offset = index_location_ == IndexLocation::kStart ? 0 : shard_nbytes - index_nbytes;
  *nbytes = index_nbytes;
}

ShardIndex ShardingCodec::DecodeIndex(ConstBytes encoded_index, uint64_t shard_nbytes) const {
  // Indices are small (16 bytes per inner chunk) and decoded once per shard, so a fresh vector
  // per shard is fine; it becomes the cached ShardIndex's storage.
  std::vector<uint64_t> entries(static_cast<size_t>(num_inner_chunks_) * 2);
  Bytes dst(reinterpret_cast<std::byte *>(entries.data()), entries.size() * sizeof(uint64_t));
  try {
    index_->Decode(encoded_index, dst);
  } catch (const Error &e) {
    throw Error(StrCat("shard index: ", e.what()));
  }
  return ShardIndex(std::move(entries), shard_nbytes);
}

std::string ShardingCodec::Describe() const {
  std::string inner = inner_ ? inner_->Describe() : "strings";
  return StrCat("sharding_indexed(", inner, "; index ", index_->Describe(), " at ",
                index_location_ == IndexLocation::kStart ? "start" : "end", ")");
}

}  // namespace biodali::codecs
