// A small C API over the zarr layer for tests and benchmarks (loaded from Python with
// ctypes; see python/biodali/_testing.py). Every function returns 0 on success, or nonzero
// with the error message copied (NUL-terminated, truncated to fit) into `err`.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "capi/guarded.h"
#include "codecs/blosc_codec.h"
#include "codecs/blosc_lz4_frame.h"
#include "codecs/buffer.h"
#include "codecs/crc32c.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "zarr/array.h"
#include "zarr/strings.h"

#define BIODALI_API extern "C" __attribute__((visibility("default")))

namespace {

using biodali::zarr::Array;

using biodali::capi::CopyString;
using biodali::capi::Guarded;

// Grid positions of the read chunks the decode-ceiling benchmark decodes: all of the first
// shard's inner chunks when sharded (a shard is the unit a reader fetches), else the first
// `max_chunks` chunks in C order (all when max_chunks <= 0).
std::vector<std::vector<int64_t>> CeilingChunks(const Array &array, int64_t max_chunks) {
  const auto &md = array.metadata();
  std::vector<int64_t> grid = array.read_grid_shape();
  std::vector<int64_t> extent = grid;
  if (md.sharded) {
    for (size_t d = 0; d < grid.size(); ++d) {
      extent[d] = std::min(grid[d], md.storage_chunk_shape[d] / md.read_chunk_shape[d]);
    }
    max_chunks = 0;
  }
  std::vector<std::vector<int64_t>> chunks;
  std::vector<int64_t> pos(extent.size(), 0);
  for (int64_t e : extent) {
    if (e == 0) return chunks;
  }
  for (;;) {
    chunks.push_back(pos);
    if (max_chunks > 0 && static_cast<int64_t>(chunks.size()) >= max_chunks) return chunks;
    int d = static_cast<int>(pos.size()) - 1;
    for (; d >= 0; --d) {
      if (++pos[d] < extent[d]) break;
      pos[d] = 0;
    }
    if (d < 0) return chunks;
  }
}

std::span<std::byte> ThreadOutput(size_t nbytes) {
  thread_local biodali::codecs::ScratchBuffer out;
  return out.Get(nbytes);
}

}  // namespace

BIODALI_API int biodali_zarr_info(const char *path, char *json_out, size_t json_cap, char *err,
                                  size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(path);
    const auto &md = array->metadata();
    nlohmann::json info = {
        {"shape", md.shape},
        {"dtype", biodali::DTypeName(md.dtype)},
        {"read_chunk_shape", md.read_chunk_shape},
        {"storage_chunk_shape", md.storage_chunk_shape},
        {"sharded", md.sharded},
        {"zarr_format", md.zarr_format},
    };
    std::string text = info.dump();
    if (text.size() + 1 > json_cap) {
      throw biodali::Error(biodali::StrCat("biodali_zarr_info: json_out needs ", text.size() + 1,
                                           " bytes, got ", json_cap));
    }
    CopyString(text, json_out, json_cap);
  });
}

BIODALI_API int biodali_zarr_read_region(const char *path, const int64_t *start,
                                         const int64_t *count, int ndim, void *dst,
                                         size_t dst_nbytes, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(path);
    const auto &md = array->metadata();
    if (ndim != static_cast<int>(md.shape.size())) {
      biodali::FailAt(path, "region has ", ndim, " dimensions, the array ", md.shape.size());
    }
    size_t nbytes = biodali::DTypeSize(md.dtype);
    for (int d = 0; d < ndim; ++d) nbytes *= static_cast<size_t>(std::max<int64_t>(count[d], 0));
    if (nbytes != dst_nbytes) {
      biodali::FailAt(path, "destination holds ", dst_nbytes, " bytes, the region needs ", nbytes);
    }
    array->ReadRegion({start, static_cast<size_t>(ndim)}, {count, static_cast<size_t>(ndim)}, dst);
  });
}

// Decodes every read chunk of the array with `num_threads` threads sharing one Array (as the
// reader does), chunk i of the read grid (C order) into dst + i * read_chunk_nbytes. Lets
// tests exercise the shared shard-index and file caches under concurrency.
BIODALI_API int biodali_zarr_read_chunks(const char *path, int num_threads, void *dst,
                                         size_t dst_nbytes, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(path);
    std::vector<int64_t> grid = array->read_grid_shape();
    int64_t num_chunks = 1;
    for (int64_t n : grid) num_chunks *= n;
    const size_t chunk_nbytes = static_cast<size_t>(array->read_chunk_nbytes());
    if (dst_nbytes != static_cast<size_t>(num_chunks) * chunk_nbytes) {
      biodali::FailAt(path, "destination holds ", dst_nbytes, " bytes, ", num_chunks,
                      " chunks need ", static_cast<size_t>(num_chunks) * chunk_nbytes);
    }
    biodali::ThreadPool pool(std::max(num_threads, 1), "biodali-test");
    pool.ParallelFor(num_chunks, [&](int64_t i) {
      std::vector<int64_t> coords(grid.size());
      for (int64_t rest = i, d = static_cast<int64_t>(grid.size()) - 1; d >= 0; --d) {
        coords[d] = rest % grid[d];
        rest /= grid[d];
      }
      auto *out = static_cast<std::byte *>(dst) + static_cast<size_t>(i) * chunk_nbytes;
      array->DecodeReadChunk(coords, {out, chunk_nbytes});
    });
  });
}

BIODALI_API int biodali_decode_ceiling(const char *array_path, int num_threads,
                                       int64_t max_chunks, double *seconds,
                                       int64_t *decoded_nbytes, int64_t *num_chunks, char *err,
                                       size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(array_path);
    std::vector<std::vector<std::byte>> encoded;
    for (const auto &coords : CeilingChunks(*array, max_chunks)) {
      std::vector<std::byte> bytes;
      if (array->ReadEncodedReadChunk(coords, &bytes)) encoded.push_back(std::move(bytes));
    }
    if (encoded.empty()) biodali::FailAt(array_path, "no stored chunks to decode");
    const size_t chunk_nbytes = static_cast<size_t>(array->read_chunk_nbytes());
    biodali::ThreadPool pool(std::max(num_threads, 1), "biodali-bench");
    auto decode = [&](int64_t i) {
      array->DecodeEncodedReadChunk(encoded[i], ThreadOutput(chunk_nbytes));
    };
    double best = 1e300;
    for (int rep = 0; rep < 3; ++rep) {  // best of 3: the first also warms scratch buffers
      auto t0 = std::chrono::steady_clock::now();
      pool.ParallelFor(static_cast<int64_t>(encoded.size()), decode);
      std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      best = std::min(best, dt.count());
    }
    *seconds = best;
    *num_chunks = static_cast<int64_t>(encoded.size());
    *decoded_nbytes = *num_chunks * static_cast<int64_t>(chunk_nbytes);
  });
}

// Reads a whole string array. *count gets the number of items and *out_nbytes the bytes the
// packed result needs: per item a uint32 LE byte length then its UTF-8 bytes (strings may hold
// NUL, so they are length-prefixed rather than NUL-separated). `out` is written only when
// out_cap >= *out_nbytes; call again with a larger buffer otherwise.
BIODALI_API int biodali_zarr_read_strings(const char *path, char *out, size_t out_cap,
                                          size_t *out_nbytes, int64_t *count, char *err,
                                          size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    std::vector<std::string> items = biodali::zarr::ReadStringArray(path);
    size_t nbytes = 0;
    for (const auto &item : items) nbytes += 4 + item.size();
    *out_nbytes = nbytes;
    *count = static_cast<int64_t>(items.size());
    if (out == nullptr || out_cap < nbytes) return;
    char *p = out;
    for (const auto &item : items) {
      const auto len = static_cast<uint32_t>(item.size());
      const unsigned char len_le[4] = {static_cast<unsigned char>(len),
                                       static_cast<unsigned char>(len >> 8),
                                       static_cast<unsigned char>(len >> 16),
                                       static_cast<unsigned char>(len >> 24)};
      std::memcpy(p, len_le, 4);
      if (!item.empty()) std::memcpy(p + 4, item.data(), item.size());
      p += 4 + item.size();
    }
  });
}

// Array::DecodeReadChunkRange for `num_ranges` ranges (chunk_index[i], element_begin[i],
// num_elements[i]) decoded by `num_threads` threads sharing one Array, range i into dst after
// the elements of ranges 0..i-1. *partial gets SupportsPartialDecode(). With `in_pieces`,
// DecodeReadChunkRangeInPieces instead, its pieces checked to arrive in order and to tile the
// range exactly.
BIODALI_API int biodali_zarr_read_chunk_ranges(const char *path, int num_threads, int in_pieces,
                                               int64_t num_ranges, const int64_t *chunk_index,
                                               const int64_t *element_begin,
                                               const int64_t *num_elements, void *dst,
                                               size_t dst_nbytes, int *partial, char *err,
                                               size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(path);
    const size_t elem_nbytes = biodali::DTypeSize(array->metadata().dtype);
    std::vector<size_t> offsets(static_cast<size_t>(std::max<int64_t>(num_ranges, 0)) + 1, 0);
    for (int64_t i = 0; i < num_ranges; ++i) {
      offsets[i + 1] = offsets[i] + elem_nbytes * static_cast<size_t>(
                                                      std::max<int64_t>(num_elements[i], 0));
    }
    if (offsets.back() != dst_nbytes) {
      biodali::FailAt(path, "destination holds ", dst_nbytes, " bytes, the ranges need ",
                      offsets.back());
    }
    *partial = array->SupportsPartialDecode() ? 1 : 0;
    biodali::ThreadPool pool(std::max(num_threads, 1), "biodali-test");
    pool.ParallelFor(num_ranges, [&](int64_t i) {
      std::byte *out = static_cast<std::byte *>(dst) + offsets[i];
      if (!in_pieces) {
        array->DecodeReadChunkRange(chunk_index[i], element_begin[i], num_elements[i], out);
        return;
      }
      const size_t begin = static_cast<size_t>(std::max<int64_t>(element_begin[i], 0)) * elem_nbytes;
      size_t next = begin;
      array->DecodeReadChunkRangeInPieces(
          chunk_index[i], element_begin[i], num_elements[i], [&](size_t offset, std::span<const std::byte> bytes) {
            if (offset != next || bytes.empty() || offset + bytes.size() > begin + (offsets[i + 1] - offsets[i]))
              biodali::FailAt(path, "piece [", offset, ", ", offset + bytes.size(), ") does not follow ", next);
            std::memcpy(out + (offset - begin), bytes.data(), bytes.size());
            next = offset + bytes.size();
          });
      if (next != begin + (offsets[i + 1] - offsets[i]))
        biodali::FailAt(path, "pieces end at byte ", next, ", the range at ", begin + (offsets[i + 1] - offsets[i]));
    });
  });
}

// Times `num_calls` decodes of one read chunk of a 1-D array, spread over `num_threads`
// threads sharing one Array: DecodeReadChunkRange(chunk_index, element_begin, num_elements)
// or, when num_elements < 0, DecodeReadChunk of the whole chunk. The chunk is read from its
// file each time (warm page cache), as the reader would. Best of 3 wall-clock seconds.
BIODALI_API int biodali_zarr_time_chunk_range(const char *path, int num_threads,
                                              int64_t chunk_index, int64_t element_begin,
                                              int64_t num_elements, int64_t num_calls,
                                              double *seconds, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    auto array = Array::Open(path);
    const size_t chunk_nbytes = static_cast<size_t>(array->read_chunk_nbytes());
    const int64_t coords[1] = {chunk_index};
    biodali::ThreadPool pool(std::max(num_threads, 1), "biodali-bench");
    auto decode = [&](int64_t) {
      std::span<std::byte> out = ThreadOutput(chunk_nbytes);
      if (num_elements < 0) {
        array->DecodeReadChunk(coords, out);
      } else {
        array->DecodeReadChunkRange(chunk_index, element_begin, num_elements, out.data());
      }
    };
    double best = 1e300;
    for (int rep = 0; rep < 3; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      pool.ParallelFor(num_calls, decode);
      std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
      best = std::min(best, dt.count());
    }
    *seconds = best;
  });
}

// CRC-32C of a buffer with a chosen implementation (0 auto, 1 portable, 2 hardware), so tests
// can check the table-driven and SSE4.2 paths against each other.
BIODALI_API int biodali_crc32c(const void *data, size_t nbytes, int impl, uint32_t *crc,
                               char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    if (impl < 0 || impl > 2) throw biodali::Error("biodali_crc32c: impl must be 0, 1 or 2");
    *crc = biodali::codecs::Crc32c({static_cast<const std::byte *>(data), nbytes},
                                   static_cast<biodali::codecs::Crc32cImpl>(impl));
  });
}

// Decodes one blosc frame into dst (exactly the frame's decoded size). impl 0: as readers do
// (biodali's lz4 frame decoder where it applies, else c-blosc); 1: c-blosc only. *used_fast
// tells whether biodali's decoder ran.
BIODALI_API int biodali_blosc_decode(const void *src, size_t src_nbytes, void *dst, size_t dst_nbytes,
                                     int impl, int *used_fast, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    using biodali::codecs::BloscCodec;
    biodali::codecs::ConstBytes in(static_cast<const std::byte *>(src), src_nbytes);
    biodali::codecs::Bytes out(static_cast<std::byte *>(dst), dst_nbytes);
    *used_fast = 0;
    if (impl == 0) {
      BloscCodec::CheckFrame(in, dst_nbytes);
      if (dst_nbytes > 0 && biodali::codecs::DecodeBloscLz4Frame(in, out)) {
        *used_fast = 1;
        return;
      }
    }
    BloscCodec::DecodeWithCBlosc(in, out);
  });
}

// Decodes bytes [byte_begin, byte_begin + dst_nbytes) of a blosc frame of `decoded_nbytes`
// bytes, as partial chunk reads do.
BIODALI_API int biodali_blosc_decode_range(const void *src, size_t src_nbytes, size_t decoded_nbytes,
                                           size_t byte_begin, void *dst, size_t dst_nbytes,
                                           char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    biodali::codecs::BloscCodec().DecodeRangeInto(
        {static_cast<const std::byte *>(src), src_nbytes}, decoded_nbytes, byte_begin,
        {static_cast<std::byte *>(dst), dst_nbytes});
  });
}
