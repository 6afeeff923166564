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
#include "codecs/vlen_utf8_codec.h"
#include "common/dtype.h"

namespace biodali::codecs {

// What an array's elements are: fixed-size numbers (the `bytes` codec) or variable-length
// strings (the `vlen-utf8` codec). Parsers are told which they expect.
enum class ArrayKind { kNumeric, kString };

struct ParsedCodecs {
  std::unique_ptr<CodecChain> chain;        // unsharded numeric arrays: decodes one chunk
  std::unique_ptr<ShardingCodec> sharding;  // sharded arrays (then `chain` is null)
  // String arrays: decodes one read chunk (inner chunk when sharded); `chain` and the
  // sharding codec's inner chain are null.
  std::unique_ptr<StringCodecChain> string_chain;
  // The shape decoded in one go: the inner chunk shape when sharded, else the chunk shape.
  std::vector<int64_t> read_chunk_shape;

  const CodecChain &read_chain() const { return sharding ? sharding->inner() : *chain; }
};

// zarr v3 `codecs` for chunks of `chunk_shape` elements of `dtype`: array->array codecs
// (transpose with the identity order only), one array->bytes codec (bytes or
// sharding_indexed), then bytes->bytes codecs (blosc, zstd, gzip, crc32c, numcodecs.zlib ...).
ParsedCodecs ParseV3Codecs(const nlohmann::json &codecs, std::span<const int64_t> chunk_shape,
                           DType dtype);

// zarr v3 `codecs` of a string array (data_type "string"): vlen-utf8 then bytes->bytes codecs,
// or sharding_indexed whose inner codecs are those. Fills `string_chain` (and `sharding`).
ParsedCodecs ParseV3StringCodecs(const nlohmann::json &codecs,
                                 std::span<const int64_t> chunk_shape);

// zarr v2 `compressor` (null or blosc / zstd / zlib / gzip) and `filters` (null or empty).
std::unique_ptr<CodecChain> ParseV2Codecs(const nlohmann::json &compressor,
                                          const nlohmann::json &filters, DType dtype,
                                          bool big_endian);

// zarr v2 object arrays of strings: `filters` exactly [vlen-utf8], `compressor` as above.
std::unique_ptr<StringCodecChain> ParseV2StringCodecs(const nlohmann::json &compressor,
                                                      const nlohmann::json &filters);

}  // namespace biodali::codecs
