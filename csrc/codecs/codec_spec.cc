#include "codecs/codec_spec.h"

#include <string>

#include "codecs/blosc_codec.h"
#include "codecs/crc32c.h"
#include "codecs/zlib_codec.h"
#include "codecs/zstd_codec.h"
#include "common/error.h"

namespace biodali::codecs {
namespace {

using nlohmann::json;

// A v3 codec entry is {"name": ..., "configuration": {...}} (configuration optional).
std::string CodecName(const json &codec) {
  if (codec.is_string()) return codec.get<std::string>();
  if (!codec.is_object() || !codec.contains("name") || !codec["name"].is_string()) {
    throw Error(StrCat("malformed codec entry ", codec.dump()));
  }
  return codec["name"].get<std::string>();
}

const json &CodecConfig(const json &codec) {
  static const json kEmpty = json::object();
  if (codec.is_object() && codec.contains("configuration")) return codec["configuration"];
  return kEmpty;
}

// Compressors share one frame format between zarr's own codec and numcodecs' v3 wrapper.
std::unique_ptr<BytesToBytesCodec> MakeBytesToBytes(const std::string &name) {
  if (name == "blosc" || name == "numcodecs.blosc") return std::make_unique<BloscCodec>();
  if (name == "zstd" || name == "numcodecs.zstd") return std::make_unique<ZstdCodec>();
  if (name == "gzip" || name == "numcodecs.gzip") return std::make_unique<GzipCodec>();
  if (name == "numcodecs.zlib") return std::make_unique<ZlibCodec>();
  if (name == "crc32c") return std::make_unique<Crc32cCodec>();
  return nullptr;
}

std::vector<int64_t> ReadShape(const json &value, const char *what) {
  if (!value.is_array()) throw Error(StrCat(what, " must be a list of integers"));
  std::vector<int64_t> shape;
  for (const auto &v : value) {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      throw Error(StrCat(what, " must hold positive integers, got ", value.dump()));
    }
    shape.push_back(v.get<int64_t>());
  }
  return shape;
}

ParsedCodecs ParseV3(const json &codecs, std::span<const int64_t> chunk_shape, DType dtype,
                     ArrayKind kind, bool allow_sharding);

// Fills parsed->sharding, ->read_chunk_shape (the inner chunk shape) and, for string arrays,
// ->string_chain (the inner chain).
void ParseSharding(const json &config, std::span<const int64_t> shard_shape, DType dtype,
                   ArrayKind kind, ParsedCodecs *parsed) {
  std::vector<int64_t> &inner_shape = parsed->read_chunk_shape;
  inner_shape = ReadShape(config.at("chunk_shape"), "sharding_indexed chunk_shape");
  if (inner_shape.size() != shard_shape.size()) {
    throw Error(StrCat("sharding_indexed chunk_shape has ", inner_shape.size(),
                       " dimensions, the array has ", shard_shape.size()));
  }
  std::vector<int64_t> chunks_per_shard;
  for (size_t d = 0; d < shard_shape.size(); ++d) {
    if (shard_shape[d] % inner_shape[d] != 0) {
      throw Error(StrCat("sharding_indexed chunk_shape ", config.at("chunk_shape").dump(),
                         " does not divide the shard shape"));
    }
    chunks_per_shard.push_back(shard_shape[d] / inner_shape[d]);
  }
  ParsedCodecs inner = ParseV3(config.at("codecs"), inner_shape, dtype, kind, false);
  std::vector<int64_t> index_shape = chunks_per_shard;
  index_shape.push_back(2);
  const json default_index = json::parse(R"([{"name": "bytes", "configuration":
      {"endian": "little"}}, {"name": "crc32c"}])");
  const json &index_codecs = config.contains("index_codecs") ? config["index_codecs"]
                                                               : default_index;
  ParsedCodecs index = ParseV3(index_codecs, index_shape, DType::kUInt64, ArrayKind::kNumeric,
                               false);
  std::string location = config.value("index_location", std::string("end"));
  if (location != "start" && location != "end") {
    throw Error(StrCat("sharding_indexed index_location '", location,
                       "' is not supported (start or end)"));
  }
  parsed->sharding = std::make_unique<ShardingCodec>(
      std::move(chunks_per_shard), std::move(inner.chain), std::move(index.chain),
      location == "start" ? IndexLocation::kStart : IndexLocation::kEnd);
  parsed->string_chain = std::move(inner.string_chain);
}

ParsedCodecs ParseV3(const json &codecs, std::span<const int64_t> chunk_shape, DType dtype,
                     ArrayKind kind, bool allow_sharding) {
  if (!codecs.is_array() || codecs.empty()) {
    throw Error(StrCat("codecs must be a non-empty list, got ", codecs.dump()));
  }
  ParsedCodecs parsed;
  size_t i = 0;
  // array -> array codecs. Only transpose exists; its identity order changes nothing.
  for (; i < codecs.size() && CodecName(codecs[i]) == "transpose"; ++i) {
    const json &order = CodecConfig(codecs[i]).at("order");
    for (size_t d = 0; d < order.size(); ++d) {
      if (!order[d].is_number_integer() || order[d].get<int64_t>() != static_cast<int64_t>(d)) {
        throw Error(StrCat("unsupported codec 'transpose' with order ", order.dump(),
                           " (only the identity order is supported)"));
      }
    }
  }
  const char *expected = kind == ArrayKind::kString ? "vlen-utf8" : "bytes";
  if (i == codecs.size()) throw Error(StrCat("codecs have no array->bytes codec (", expected, ")"));
  std::string name = CodecName(codecs[i]);
  const json &config = CodecConfig(codecs[i]);
  std::unique_ptr<BytesCodec> bytes;
  if (name == "sharding_indexed") {
    if (!allow_sharding) throw Error("nested sharding_indexed codecs are not supported");
    ParseSharding(config, chunk_shape, dtype, kind, &parsed);
  } else if (kind == ArrayKind::kString) {
    if (name != "vlen-utf8") {
      throw Error(StrCat("unsupported codec '", name, "' for a string array (expected vlen-utf8)"));
    }
    parsed.read_chunk_shape.assign(chunk_shape.begin(), chunk_shape.end());
  } else if (name == "bytes") {
    std::string endian = config.value("endian", std::string("little"));
    if (endian != "little" && endian != "big") {
      throw Error(StrCat("bytes codec endian '", endian, "' is not supported"));
    }
    bytes = std::make_unique<BytesCodec>(DTypeSize(dtype),
                                         endian == "big" ? Endian::kBig : Endian::kLittle);
    parsed.read_chunk_shape.assign(chunk_shape.begin(), chunk_shape.end());
  } else if (MakeBytesToBytes(name)) {
    throw Error(StrCat("codec '", name, "' appears before the array->bytes codec (bytes)"));
  } else {
    throw Error(StrCat("unsupported codec '", name, "'"));
  }
  std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes;
  for (++i; i < codecs.size(); ++i) {
    std::string b2b_name = CodecName(codecs[i]);
    auto codec = MakeBytesToBytes(b2b_name);
    if (!codec) throw Error(StrCat("unsupported codec '", b2b_name, "'"));
    bytes_to_bytes.push_back(std::move(codec));
  }
  if (parsed.sharding) {
    // Compressing a whole shard would defeat partial reads; zarr-python never writes it.
    if (!bytes_to_bytes.empty()) {
      throw Error(StrCat("codec '", bytes_to_bytes[0]->name(),
                         "' after sharding_indexed is not supported"));
    }
  } else if (kind == ArrayKind::kString) {
    parsed.string_chain = std::make_unique<StringCodecChain>(std::move(bytes_to_bytes));
  } else {
    parsed.chain = std::make_unique<CodecChain>(*bytes, std::move(bytes_to_bytes));
  }
  return parsed;
}

// The v2 `compressor` entry: null (none) or one of the compressors we decode.
std::vector<std::unique_ptr<BytesToBytesCodec>> ParseV2Compressor(const json &compressor) {
  std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes;
  if (compressor.is_null()) return bytes_to_bytes;
  std::string id = compressor.is_object() ? compressor.value("id", std::string()) : "";
  std::unique_ptr<BytesToBytesCodec> codec;
  if (id == "blosc") {
    codec = std::make_unique<BloscCodec>();
  } else if (id == "zstd") {
    codec = std::make_unique<ZstdCodec>();
  } else if (id == "zlib") {
    codec = std::make_unique<ZlibCodec>();
  } else if (id == "gzip") {
    codec = std::make_unique<GzipCodec>();
  } else {
    throw Error(StrCat("unsupported codec (compressor) '", id.empty() ? compressor.dump() : id,
                       "'"));
  }
  bytes_to_bytes.push_back(std::move(codec));
  return bytes_to_bytes;
}

std::string FilterId(const json &filter) {
  return filter.is_object() ? filter.value("id", filter.dump()) : filter.dump();
}

}  // namespace

ParsedCodecs ParseV3Codecs(const json &codecs, std::span<const int64_t> chunk_shape,
                           DType dtype) {
  return ParseV3(codecs, chunk_shape, dtype, ArrayKind::kNumeric, true);
}

ParsedCodecs ParseV3StringCodecs(const json &codecs, std::span<const int64_t> chunk_shape) {
  // The dtype only sizes shard indices here (uint64 entries); strings have no element size.
  return ParseV3(codecs, chunk_shape, DType::kUInt8, ArrayKind::kString, true);
}

std::unique_ptr<CodecChain> ParseV2Codecs(const json &compressor, const json &filters,
                                          DType dtype, bool big_endian) {
  if (!filters.is_null() && !(filters.is_array() && filters.empty())) {
    const json &first = filters.is_array() ? filters[0] : filters;
    throw Error(StrCat("unsupported filter '", FilterId(first),
                       "' (only arrays without filters are read)"));
  }
  BytesCodec bytes(DTypeSize(dtype), big_endian ? Endian::kBig : Endian::kLittle);
  return std::make_unique<CodecChain>(bytes, ParseV2Compressor(compressor));
}

std::unique_ptr<StringCodecChain> ParseV2StringCodecs(const json &compressor,
                                                      const json &filters) {
  // Object arrays name their element codec as the one filter; other object codecs (json,
  // pickle, vlen-bytes, categorize) hold something other than UTF-8 strings.
  if (!filters.is_array() || filters.size() != 1 || FilterId(filters[0]) != "vlen-utf8") {
    throw Error(StrCat("object array filters ", filters.dump(),
                       " are not supported (strings need exactly [{\"id\": \"vlen-utf8\"}])"));
  }
  return std::make_unique<StringCodecChain>(ParseV2Compressor(compressor));
}

}  // namespace biodali::codecs
