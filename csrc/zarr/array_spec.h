// Internal to csrc/zarr: an array's metadata parsed once into what the reader needs (shape,
// dtype, fill value, chunk key layout, codec objects). No JSON survives past this point.
#pragma once

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

struct ArraySpec {
  ArrayMetadata metadata;
  codecs::ParsedCodecs codecs;
  ChunkKeyEncoding key_encoding;
  std::string metadata_path;  // zarr.json or .zarray, for error messages
};

// Reads and validates the metadata of the array in directory `path`. Throws Error naming the
// metadata file (or the directory, when no metadata exists) and the problem.
ArraySpec ParseArraySpec(const std::string &path);

}  // namespace biodali::zarr
