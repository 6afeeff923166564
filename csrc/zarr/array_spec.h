// Internal to csrc/zarr: an array's metadata parsed once into what the reader needs (shape,
// dtype, fill value, chunk key layout, codec objects). No JSON survives past this point.
#pragma once

#include <span>
#include <string>

#include "codecs/codec_spec.h"
#include "zarr/array.h"

namespace biodali::zarr {

// Arrays with more dimensions are rejected at open so that the per-chunk code can keep its
// coordinates in fixed-size arrays on the stack.
constexpr int kMaxDims = 32;

// How a storage chunk's grid position becomes a file name under the array directory.
struct ChunkKeyEncoding {
  bool v3_default = false;  // "c/0/1" (v3 default) vs "0.1" (v2, and v3's "v2" encoding)
  char separator = '.';
};

// Writes the file path of the storage chunk (shard) at grid position `coords` of the array in
// directory `array_path` into *out (reusing its capacity).
void StorageChunkPath(const std::string &array_path, const ChunkKeyEncoding &key,
                      std::span<const int64_t> coords, std::string *out);

struct ArraySpec {
  // For string arrays metadata.dtype is meaningless and fill_value empty; see string_fill.
  ArrayMetadata metadata;
  codecs::ParsedCodecs codecs;
  ChunkKeyEncoding key_encoding;
  std::string metadata_path;  // zarr.json or .zarray, for error messages
  std::string string_fill;    // string arrays: what missing chunks hold
};

// Reads and validates the metadata of the array in directory `path`, which must hold `kind`
// elements: numeric arrays (any other data type is "unsupported"), or strings (v3 data_type
// "string" with vlen-utf8, v2 dtype "|O" with the vlen-utf8 filter; anything else is "not a
// string array"). Throws Error naming the metadata file (or the directory, when no metadata
// exists) and the problem.
ArraySpec ParseArraySpec(const std::string &path,
                         codecs::ArrayKind kind = codecs::ArrayKind::kNumeric);

}  // namespace biodali::zarr
