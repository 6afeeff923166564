// Builds codec objects from array metadata (JSON), once, when an array is opened. Errors name
// the codec or setting that is not supported; the caller prefixes the metadata file's path.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <nlohmann/json.hpp>

#include "codecs/codec_chain.h"
#include "codecs/sharding_codec.h"
#include "common/dtype.h"

namespace biodali::codecs {

struct ParsedCodecs {
  std::unique_ptr<CodecChain> chain;        // unsharded arrays: decodes one chunk
  std::unique_ptr<ShardingCodec> sharding;  // sharded arrays (then `chain` is null)
  // The shape decoded in one go: the inner chunk shape when sharded, else the chunk shape.
  std::vector<int64_t> read_chunk_shape;

  const CodecChain &read_chain() const { return sharding ? sharding->inner() : *chain; }
};

// zarr v3 `codecs` for chunks of `chunk_shape` elements of `dtype`: array->array codecs
// (transpose with the identity order only), one array->bytes codec (bytes or
// sharding_indexed), then bytes->bytes codecs (blosc, zstd, gzip, crc32c, numcodecs.zlib ...).
ParsedCodecs ParseV3Codecs(const nlohmann::json &codecs, std::span<const int64_t> chunk_shape,
                           DType dtype);

// zarr v2 `compressor` (null or blosc / zstd / zlib / gzip) and `filters` (null or empty).
std::unique_ptr<CodecChain> ParseV2Codecs(const nlohmann::json &compressor,
                                          const nlohmann::json &filters, DType dtype,
                                          bool big_endian);

}  // namespace biodali::codecs
