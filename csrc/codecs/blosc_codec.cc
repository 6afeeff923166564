#include "codecs/blosc_codec.h"

#include <blosc.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "codecs/blosc_lz4_frame.h"
#include "common/error.h"

namespace biodali::codecs {

size_t BloscCodec::CheckedDecodedNbytes(ConstBytes src) {
  if (src.size() < BLOSC_MIN_HEADER_LENGTH) {
    throw Error(StrCat("blosc: frame of ", src.size(), " bytes is shorter than the ",
                       BLOSC_MIN_HEADER_LENGTH, "-byte header (truncated?)"));
  }
  size_t nbytes = 0, cbytes = 0, blocksize = 0;
  blosc_cbuffer_sizes(src.data(), &nbytes, &cbytes, &blocksize);
  // blosc_cbuffer_validate compares the header's compressed size with the buffer we hold; a
  // mismatch means the file was truncated (or padded) and decoding would read out of bounds.
  size_t validated_nbytes = 0;
  if (blosc_cbuffer_validate(src.data(), src.size(), &validated_nbytes) != 0) {
    throw Error(StrCat("blosc: truncated or corrupt frame (header says ", cbytes,
                       " compressed bytes, have ", src.size(), ")"));
  }
  return validated_nbytes;
}

void BloscCodec::CheckFrame(ConstBytes src, size_t decoded_nbytes) {
  size_t nbytes = CheckedDecodedNbytes(src);
  if (nbytes != decoded_nbytes) {
    throw Error(StrCat("blosc: frame decodes to ", nbytes, " bytes, expected ", decoded_nbytes));
  }
}

void BloscCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  CheckFrame(src, dst.size());
  if (dst.empty()) return;
  if (DecodeBloscLz4Frame(src, dst)) return;
  DecompressCheckedFrame(src, dst);
}

void BloscCodec::DecodeWithCBlosc(ConstBytes src, Bytes dst) {
  CheckFrame(src, dst.size());
  if (!dst.empty()) DecompressCheckedFrame(src, dst);
}

void BloscCodec::DecompressCheckedFrame(ConstBytes src, Bytes dst) {
  // The _ctx variant keeps its state on the stack, so concurrent calls are safe; one internal
  // thread because our own pool already decodes chunks in parallel.
  int decoded = blosc_decompress_ctx(src.data(), dst.data(), dst.size(), 1);
  if (decoded < 0 || static_cast<size_t>(decoded) != dst.size()) {
    throw Error(StrCat("blosc: corrupt compressed data (decompressor returned ", decoded, ")"));
  }
}

void BloscCodec::DecodeRangeInto(ConstBytes src, size_t decoded_nbytes, size_t byte_begin,
                                 Bytes dst) const {
  CheckFrame(src, decoded_nbytes);
  const size_t nbytes = decoded_nbytes;
  if (byte_begin > nbytes || dst.size() > nbytes - byte_begin) {
    throw Error(StrCat("blosc: byte range [", byte_begin, ", ", byte_begin + dst.size(),
                       ") is outside a frame of ", nbytes, " bytes"));
  }
  if (dst.empty()) return;
  if (DecodeBloscLz4FrameRange(src, byte_begin, dst)) return;
  size_t typesize = 0;
  int flags = 0;
  blosc_cbuffer_metainfo(src.data(), &typesize, &flags);
  thread_local ScratchBuffer scratch;
  // blosc_getitem counts in items of the frame's typesize and cannot reach a trailing partial
  // item (a frame whose size is not a multiple of it): decode such frames whole.
  if (typesize == 0 || nbytes % typesize != 0) {
    Bytes whole = scratch.Get(nbytes);
    DecodeInto(src, whole);
    std::memcpy(dst.data(), whole.data() + byte_begin, dst.size());
    return;
  }
  const size_t first_item = byte_begin / typesize;
  const size_t end_item = (byte_begin + dst.size() + typesize - 1) / typesize;
  const size_t items_nbytes = (end_item - first_item) * typesize;
  // A range that does not start and end on the frame's items (typesize other than the
  // element size) is fetched whole items at a time into scratch and trimmed.
  const bool aligned = first_item * typesize == byte_begin && items_nbytes == dst.size();
  std::byte *out = aligned ? dst.data() : scratch.Get(items_nbytes).data();
  // blosc_getitem (c-blosc 1.21) keeps its state in a context on the stack and allocates its
  // own block temporaries per call; it reads no global state (unlike blosc_decompress), so
  // concurrent calls are safe. It bounds its reads by the header's compressed size, which
  // CheckedDecodedNbytes has matched against the bytes we hold. Offsets fit in int: blosc1
  // frames hold at most BLOSC_MAX_BUFFERSIZE (< 2 GiB) bytes, which validation checks.
  int got = blosc_getitem(src.data(), static_cast<int>(first_item),
                          static_cast<int>(end_item - first_item), out);
  if (got < 0 || static_cast<size_t>(got) != items_nbytes) {
    throw Error(StrCat("blosc: corrupt compressed data (getitem returned ", got, ")"));
  }
  if (!aligned) std::memcpy(dst.data(), out + (byte_begin - first_item * typesize), dst.size());
}

bool BloscCodec::SelectiveSpan(ConstBytes head, size_t byte_begin, size_t byte_end,
                               size_t *span_begin, size_t *span_end) {
  constexpr size_t kHeader = 16;
  if (head.size() < kHeader || byte_begin >= byte_end) return false;
  auto u32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, head.data() + at, sizeof v);  // little endian, as blosc writes it
    return static_cast<size_t>(v);
  };
  const auto flags = static_cast<unsigned>(head[2]);
  const size_t nbytes = u32(4), blocksize = u32(8), cbytes = u32(12);
  if ((flags & 0x1) && (flags & 0x4)) return false;  // blosc2 extended header
  if (nbytes == 0 || blocksize == 0 || byte_end > nbytes) return false;
  if (flags & 0x2) {  // memcpyed: the bytes follow the header as they are
    *span_begin = kHeader + byte_begin;
    *span_end = kHeader + byte_end;
    return *span_end <= cbytes;
  }
  const size_t nblocks = (nbytes + blocksize - 1) / blocksize;
  const size_t table_end = kHeader + 4 * nblocks;
  if (table_end > head.size()) return false;
  const size_t first = byte_begin / blocksize, last = (byte_end - 1) / blocksize;
  const size_t begin = u32(kHeader + 4 * first);
  const size_t end = last + 1 < nblocks ? u32(kHeader + 4 * (last + 1)) : cbytes;
  if (begin < table_end || end < begin || end > cbytes) return false;  // not in block order
  *span_begin = begin;
  *span_end = end;
  return true;
}

ConstBytes BloscCodec::Decode(ConstBytes src, ScratchBuffer *scratch) const {
  Bytes out = scratch->Get(CheckedDecodedNbytes(src));
  DecodeInto(src, out);
  return out;
}

}  // namespace biodali::codecs
