#include "zarr/strings.h"

#include <algorithm>
#include <optional>

#include "codecs/buffer.h"
#include "common/error.h"
#include "zarr/array_spec.h"
#include "engine/io/local_file.h"

namespace biodali::zarr {
namespace {

using codecs::ArrayKind;
using codecs::Bytes;

// Reads the whole file (or byte range of a shard) and decodes one chunk of `num_items`
// items, appending the first `num_valid` to *out; errors name `path` (and the inner chunk).
void DecodeChunk(const ArraySpec &spec, const io::LocalFile &file, const std::string &path,
                 uint64_t offset, uint64_t nbytes, int64_t inner_chunk, int64_t num_items,
                 int64_t num_valid, codecs::ScratchBuffer *encoded_buf,
                 std::vector<std::string> *out) {
  Bytes encoded = encoded_buf->Get(nbytes);
  file.ReadAt(offset, encoded);
  try {
    spec.codecs.string_chain->Decode(encoded, num_items, num_valid, out);
  } catch (const Error &e) {
    if (inner_chunk >= 0) FailAt(path, "inner chunk ", inner_chunk, ": ", e.what());
    FailAt(path, e.what());
  }
}

}  // namespace

std::vector<std::string> ReadStringArray(const std::string &path) {
  ArraySpec spec = ParseArraySpec(path, ArrayKind::kString);
  const ArrayMetadata &md = spec.metadata;
  if (md.shape.size() > 1) {
    FailAt(spec.metadata_path, "string array has ", md.shape.size(),
           " dimensions; only 1-D (and 0-d) string arrays are read");
  }
  // A 0-d array is one chunk of one item, at grid position () (key "c" or "0").
  const bool scalar = md.shape.empty();
  const int64_t num_items = scalar ? 1 : md.shape[0];
  const int64_t chunk_len = scalar ? 1 : md.read_chunk_shape[0];
  const int64_t storage_len = scalar ? 1 : md.storage_chunk_shape[0];
  const int64_t chunks_per_file = storage_len / chunk_len;
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(num_items));
  codecs::ScratchBuffer encoded;
  std::string file_path;
  // Appends the fill value for read chunk `chunk` (missing file or absent inner chunk).
  auto fill = [&](int64_t chunk) {
    int64_t n = std::min(chunk_len, num_items - chunk * chunk_len);
    out.insert(out.end(), static_cast<size_t>(n), spec.string_fill);
  };
  const int64_t num_files = scalar ? 1 : (num_items + storage_len - 1) / storage_len;
  for (int64_t f = 0; f < num_files; ++f) {
    const int64_t coords[1] = {f};
    StorageChunkPath(path, spec.key_encoding, {coords, scalar ? 0u : 1u}, &file_path);
    const int64_t first_chunk = f * chunks_per_file;
    const int64_t end_chunk =
        std::min(first_chunk + chunks_per_file, (num_items + chunk_len - 1) / chunk_len);
    io::LocalFile file;
    if (!file.Open(file_path)) {
      for (int64_t c = first_chunk; c < end_chunk; ++c) fill(c);
      continue;
    }
    if (!md.sharded) {
      DecodeChunk(spec, file, file_path, 0, file.nbytes(), -1, chunk_len,
                  std::min(chunk_len, num_items - first_chunk * chunk_len), &encoded, &out);
      continue;
    }
    const codecs::ShardingCodec &sharding = *spec.codecs.sharding;
    uint64_t index_offset = 0, index_nbytes = 0;
    try {
      sharding.IndexRange(file.nbytes(), &index_offset, &index_nbytes);
    } catch (const Error &e) {
      FailAt(file_path, e.what());
    }
    Bytes encoded_index = encoded.Get(index_nbytes);
    file.ReadAt(index_offset, encoded_index);
    std::optional<codecs::ShardIndex> index;
    try {
      index.emplace(sharding.DecodeIndex(encoded_index, file.nbytes()));
    } catch (const Error &e) {
      FailAt(file_path, e.what());
    }
    for (int64_t c = first_chunk; c < end_chunk; ++c) {
      uint64_t offset = 0, nbytes = 0;
      if (!index->Find(c - first_chunk, &offset, &nbytes)) {
        fill(c);
        continue;
      }
      DecodeChunk(spec, file, file_path, offset, nbytes, c - first_chunk, chunk_len,
                  std::min(chunk_len, num_items - c * chunk_len), &encoded, &out);
    }
  }
  return out;
}

}  // namespace biodali::zarr
