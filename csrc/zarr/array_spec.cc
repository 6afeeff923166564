#include "zarr/array_spec.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "zarr/node.h"

namespace biodali::zarr {
namespace {

using nlohmann::json;

std::vector<int64_t> ReadDims(const json &value, const char *what, bool allow_zero) {
  if (!value.is_array()) throw Error(StrCat(what, " must be a list of integers"));
  std::vector<int64_t> dims;
  for (const auto &v : value) {
    if (!v.is_number_integer() || v.get<int64_t>() < (allow_zero ? 0 : 1)) {
      throw Error(StrCat(what, " must hold ", allow_zero ? "non-negative" : "positive",
                         " integers, got ", value.dump()));
    }
    dims.push_back(v.get<int64_t>());
  }
  if (dims.size() > static_cast<size_t>(kMaxDims)) {
    throw Error(StrCat(what, " has ", dims.size(), " dimensions; at most ", kMaxDims,
                       " are supported"));
  }
  return dims;
}

// Float fill values may be written as strings: "NaN", "Infinity", "-Infinity", or (v3) the
// raw bits in hex, "0x7fc00000".
bool ParseSpecialFloat(const std::string &s, DType dtype, std::vector<std::byte> *out) {
  double value;
  if (s == "NaN") {
    value = std::numeric_limits<double>::quiet_NaN();
  } else if (s == "Infinity") {
    value = std::numeric_limits<double>::infinity();
  } else if (s == "-Infinity") {
    value = -std::numeric_limits<double>::infinity();
  } else if (s.size() > 2 && s[0] == '0' && s[1] == 'x') {
    size_t nbytes = DTypeSize(dtype);
    if (s.size() != 2 + 2 * nbytes) return false;
    uint64_t bits = 0;
    for (size_t i = 2; i < s.size(); ++i) {
      char c = s[i];
      int digit = c >= '0' && c <= '9' ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (digit < 0) return false;
      bits = bits << 4 | static_cast<uint64_t>(digit);
    }
    // The hex string is the value's bits: store them as a native integer of the same width.
    if (nbytes == 2) {
      uint16_t b = static_cast<uint16_t>(bits);
      std::memcpy(out->data(), &b, 2);
    } else if (nbytes == 4) {
      uint32_t b = static_cast<uint32_t>(bits);
      std::memcpy(out->data(), &b, 4);
    } else {
      std::memcpy(out->data(), &bits, 8);
    }
    return true;
  } else {
    return false;
  }
  ConvertElements(&value, DType::kFloat64, out->data(), dtype, 1);
  return true;
}

// One element in native byte order. A v2 null means "no fill value": zeros, as zarr-python reads.
std::vector<std::byte> ParseFillValue(const json &v, DType dtype) {
  std::vector<std::byte> out(DTypeSize(dtype), std::byte{0});
  if (v.is_null()) return out;
  if (v.is_boolean()) {
    int64_t b = v.get<bool>() ? 1 : 0;
    ConvertElements(&b, DType::kInt64, out.data(), dtype, 1);
    return out;
  }
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    ConvertElements(&u, DType::kUInt64, out.data(), dtype, 1);
    return out;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    ConvertElements(&i, DType::kInt64, out.data(), dtype, 1);
    return out;
  }
  if (v.is_number_float()) {
    double d = v.get<double>();
    ConvertElements(&d, DType::kFloat64, out.data(), dtype, 1);
    return out;
  }
  if (v.is_string() && !IsIntegral(dtype) && ParseSpecialFloat(v.get<std::string>(), dtype, &out)) {
    return out;
  }
  throw Error(StrCat("unsupported fill_value ", v.dump(), " for data type ", DTypeName(dtype)));
}

// String fill values are strings; zarr v2 writers have also used null and 0 for "none".
std::string ParseStringFill(const json &v) {
  return v.is_string() ? v.get<std::string>() : std::string();
}

void AppendInt(std::string *out, int64_t value) {
  char buf[24];
  auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

void CheckChunkSize(const std::vector<int64_t> &shape, DType dtype) {
  // Keeps every chunk byte count representable (and far from overflow) in int64.
  int64_t nbytes = static_cast<int64_t>(DTypeSize(dtype));
  for (int64_t n : shape) {
    if (n > (int64_t{1} << 40) / nbytes) {
      throw Error(StrCat("chunk shape is too large (over 1 TiB per chunk)"));
    }
    nbytes *= n;
  }
}

void ParseV3(const json &meta, codecs::ArrayKind kind, ArraySpec *spec) {
  ArrayMetadata &md = spec->metadata;
  md.zarr_format = 3;
  md.shape = ReadDims(meta.at("shape"), "shape", true);
  const json &data_type = meta.at("data_type");
  std::string type_name = data_type.is_object() ? data_type.value("name", data_type.dump())
                          : data_type.is_string() ? data_type.get<std::string>()
                                                  : data_type.dump();
  const bool strings = kind == codecs::ArrayKind::kString;
  if (strings && type_name != "string") {
    throw Error(StrCat("data type '", type_name, "' is not a string array (expected 'string')"));
  }
  if (!strings && !ParseDTypeName(type_name, &md.dtype)) {
    throw Error(StrCat("unsupported data type '", type_name, "'"));
  }
  const json &grid = meta.at("chunk_grid");
  std::string grid_name = grid.value("name", std::string());
  if (grid_name != "regular") {
    throw Error(StrCat("unsupported chunk grid '", grid_name, "' (only regular)"));
  }
  md.storage_chunk_shape = ReadDims(grid.at("configuration").at("chunk_shape"),
                                    "chunk_grid chunk_shape", false);
  if (md.storage_chunk_shape.size() != md.shape.size()) {
    throw Error(StrCat("chunk_shape has ", md.storage_chunk_shape.size(),
                       " dimensions, shape has ", md.shape.size()));
  }
  spec->key_encoding = {true, '/'};
  if (meta.contains("chunk_key_encoding")) {
    const json &enc = meta["chunk_key_encoding"];
    std::string enc_name = enc.value("name", std::string("default"));
    if (enc_name != "default" && enc_name != "v2") {
      throw Error(StrCat("unsupported chunk_key_encoding '", enc_name, "'"));
    }
    std::string sep = enc_name == "v2" ? "." : "/";
    if (enc.contains("configuration")) sep = enc["configuration"].value("separator", sep);
    if (sep != "." && sep != "/") {
      throw Error(StrCat("unsupported chunk key separator '", sep, "'"));
    }
    spec->key_encoding = {enc_name == "default", sep[0]};
  }
  if (meta.contains("storage_transformers") && !meta["storage_transformers"].empty()) {
    throw Error("storage_transformers are not supported");
  }
  CheckChunkSize(md.storage_chunk_shape, md.dtype);
  if (strings) {
    spec->string_fill = ParseStringFill(meta.at("fill_value"));
    spec->codecs = codecs::ParseV3StringCodecs(meta.at("codecs"), md.storage_chunk_shape);
  } else {
    md.fill_value = ParseFillValue(meta.at("fill_value"), md.dtype);
    spec->codecs = codecs::ParseV3Codecs(meta.at("codecs"), md.storage_chunk_shape, md.dtype);
  }
  md.read_chunk_shape = spec->codecs.read_chunk_shape;
  md.sharded = spec->codecs.sharding != nullptr;
}

void ParseV2(const json &meta, codecs::ArrayKind kind, ArraySpec *spec) {
  ArrayMetadata &md = spec->metadata;
  md.zarr_format = 2;
  md.shape = ReadDims(meta.at("shape"), "shape", true);
  md.storage_chunk_shape = ReadDims(meta.at("chunks"), "chunks", false);
  if (md.storage_chunk_shape.size() != md.shape.size()) {
    throw Error(StrCat("chunks has ", md.storage_chunk_shape.size(), " dimensions, shape has ",
                       md.shape.size()));
  }
  md.read_chunk_shape = md.storage_chunk_shape;
  const json &dtype = meta.at("dtype");
  const bool strings = kind == codecs::ArrayKind::kString;
  if (strings && dtype != "|O") {
    throw Error(StrCat("dtype ", dtype.dump(), " is not a string array (expected \"|O\" with",
                       " the vlen-utf8 filter)"));
  }
  if (!dtype.is_string()) throw Error(StrCat("unsupported dtype ", dtype.dump(), " (structured)"));
  bool big_endian = false;
  if (!strings && !ParseTypestr(dtype.get<std::string>(), &md.dtype, &big_endian)) {
    throw Error(StrCat("unsupported dtype '", dtype.get<std::string>(), "'"));
  }
  std::string order = meta.value("order", std::string("C"));
  if (order != "C") throw Error(StrCat("order '", order, "' is not supported (only C order)"));
  std::string sep = meta.value("dimension_separator", std::string("."));
  if (sep != "." && sep != "/") throw Error(StrCat("unsupported dimension_separator '", sep, "'"));
  spec->key_encoding = {false, sep[0]};
  CheckChunkSize(md.storage_chunk_shape, md.dtype);
  if (strings) {
    spec->string_fill = ParseStringFill(meta.value("fill_value", json()));
    spec->codecs.string_chain = codecs::ParseV2StringCodecs(meta.value("compressor", json()),
                                                            meta.value("filters", json()));
  } else {
    md.fill_value = ParseFillValue(meta.value("fill_value", json()), md.dtype);
    spec->codecs.chain = codecs::ParseV2Codecs(meta.value("compressor", json()),
                                               meta.value("filters", json()), md.dtype,
                                               big_endian);
  }
  spec->codecs.read_chunk_shape = md.read_chunk_shape;
}

}  // namespace

void StorageChunkPath(const std::string &array_path, const ChunkKeyEncoding &key,
                      std::span<const int64_t> coords, std::string *out) {
  out->assign(array_path);
  if (!out->empty() && out->back() != '/') out->push_back('/');
  if (key.v3_default) {
    out->push_back('c');
    for (int64_t c : coords) {
      out->push_back(key.separator);
      AppendInt(out, c);
    }
  } else if (coords.empty()) {
    out->push_back('0');
  } else {
    for (size_t d = 0; d < coords.size(); ++d) {
      if (d > 0) out->push_back(key.separator);
      AppendInt(out, coords[d]);
    }
  }
}

ArraySpec ParseArraySpec(const std::string &path, codecs::ArrayKind kind) {
  NodeInfo node = ReadNode(path);
  if (node.kind == NodeKind::kMissing) {
    FailAt(path, "no zarr array metadata (zarr.json or .zarray) found");
  }
  if (node.kind == NodeKind::kGroup) FailAt(path, "is a zarr group, not an array");
  ArraySpec spec;
  spec.metadata_path = JoinPath(path, node.zarr_format == 3 ? "zarr.json" : ".zarray");
  try {
    if (node.zarr_format == 3) {
      ParseV3(node.metadata, kind, &spec);
    } else {
      ParseV2(node.metadata, kind, &spec);
    }
  } catch (const json::exception &e) {
    FailAt(spec.metadata_path, "malformed metadata: ", e.what());
  } catch (const Error &e) {
    FailAt(spec.metadata_path, e.what());
  }
  return spec;
}

}  // namespace biodali::zarr
