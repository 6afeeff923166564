#include "codecs/blosc_lz4_frame.h"

#include <immintrin.h>
#include <lz4.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "codecs/buffer.h"
#include "common/error.h"

namespace biodali::codecs {
namespace {

// Frame layout (c-blosc 1.x, format version 2): a 16-byte header, then one int32 start offset
// per block, then the blocks. A block is `typesize` lz4 streams (one per byte of the items,
// "split") or one, each preceded by its int32 compressed size; a stream whose compressed size
// equals its decoded size is stored as is.
constexpr size_t kHeaderNbytes = 16;
constexpr uint8_t kFormatVersion = 2;
constexpr uint8_t kByteShuffle = 0x01, kMemcpyed = 0x02, kBitShuffle = 0x04, kReserved = 0x08,
                  kDontSplit = 0x10;
constexpr uint8_t kLz4Format = 1;  // lz4 and lz4hc: the same stream format
constexpr int kMaxSplits = 16, kMinSplitNbytes = 128;

int32_t LoadLe32(const std::byte *p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

[[noreturn]] void Corrupt(size_t block, const char *what) {
  throw Error(StrCat("blosc: corrupt compressed data in block ", block, " (", what, ")"));
}

// dst[i * S + k] = src[k * stride + i] for items i < count: items gathered from byte planes
// `stride` bytes apart. 32 items per step; the unpacks interleave within 128-bit lanes, the
// permutes put the lanes in order. Returns the items done (a multiple of 32).
__attribute__((target("avx2"))) size_t Unshuffle2Avx2(const std::byte *src, size_t stride, std::byte *dst,
                                                      size_t count) {
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i));
    __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + stride + i));
    __m256i lo = _mm256_unpacklo_epi8(p0, p1);  // items 0-7 | 16-23
    __m256i hi = _mm256_unpackhi_epi8(p0, p1);  // items 8-15 | 24-31
    auto *out = reinterpret_cast<__m256i *>(dst + 2 * i);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(lo, hi, 0x31));
  }
  return i;
}

__attribute__((target("avx2"))) size_t Unshuffle4Avx2(const std::byte *src, size_t stride, std::byte *dst,
                                                      size_t count) {
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i));
    __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + stride + i));
    __m256i p2 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + 2 * stride + i));
    __m256i p3 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + 3 * stride + i));
    __m256i b01_lo = _mm256_unpacklo_epi8(p0, p1), b01_hi = _mm256_unpackhi_epi8(p0, p1);
    __m256i b23_lo = _mm256_unpacklo_epi8(p2, p3), b23_hi = _mm256_unpackhi_epi8(p2, p3);
    __m256i e0 = _mm256_unpacklo_epi16(b01_lo, b23_lo);  // items 0-3 | 16-19
    __m256i e1 = _mm256_unpackhi_epi16(b01_lo, b23_lo);  // items 4-7 | 20-23
    __m256i e2 = _mm256_unpacklo_epi16(b01_hi, b23_hi);  // items 8-11 | 24-27
    __m256i e3 = _mm256_unpackhi_epi16(b01_hi, b23_hi);  // items 12-15 | 28-31
    auto *out = reinterpret_cast<__m256i *>(dst + 4 * i);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(e0, e1, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(e2, e3, 0x20));
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(e0, e1, 0x31));
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(e2, e3, 0x31));
  }
  return i;
}

// Items [first, end) of a shuffled block of `block_nbytes` bytes (byte planes in `planes`) into
// dst (item `first` at dst[0]). A block's trailing partial item is not an item: see Unshuffle.
void UnshuffleItems(size_t typesize, size_t block_nbytes, const std::byte *planes, size_t first,
                    size_t end, std::byte *dst) {
  const size_t stride = block_nbytes / typesize;
  const size_t count = end - first;
  size_t i = typesize == 2 ? Unshuffle2Avx2(planes + first, stride, dst, count)
                           : Unshuffle4Avx2(planes + first, stride, dst, count);
  for (; i < count; ++i)
    for (size_t k = 0; k < typesize; ++k) dst[i * typesize + k] = planes[k * stride + first + i];
}

// c-blosc's unshuffle: whole items from the byte planes, then the block's trailing bytes (a
// block that is not a whole number of items) copied as they are.
void Unshuffle(size_t typesize, size_t block_nbytes, const std::byte *planes, std::byte *dst) {
  const size_t n = block_nbytes / typesize;
  UnshuffleItems(typesize, block_nbytes, planes, 0, n, dst);
  std::memcpy(dst + n * typesize, planes + n * typesize, block_nbytes - n * typesize);
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");

// A frame's header, checked against the bytes held; `ok` false when this decoder does not
// handle the frame (c-blosc does, or reports the problem).
struct Frame {
  bool ok = false, shuffled = false, may_split = false;
  size_t typesize = 0, nbytes = 0, blocksize = 0, num_blocks = 0, leftover = 0;
  ConstBytes src;

  explicit Frame(ConstBytes frame) : src(frame) {
    if (!kHasAvx2 || src.size() < kHeaderNbytes) return;
    const auto version = static_cast<uint8_t>(src[0]);
    const auto flags = static_cast<uint8_t>(src[2]);
    typesize = static_cast<uint8_t>(src[3]);
    shuffled = (flags & kByteShuffle) && typesize > 1;
    if (version != kFormatVersion || (flags >> 5) != kLz4Format ||
        (flags & (kMemcpyed | kBitShuffle | kReserved)) || (shuffled && typesize != 2 && typesize != 4))
      return;
    const int32_t n = LoadLe32(src.data() + 4), block = LoadLe32(src.data() + 8),
                  compressed = LoadLe32(src.data() + 12);
    if (n <= 0 || compressed < 0 || static_cast<size_t>(compressed) != src.size() || block <= 0 || block > n)
      return;
    nbytes = static_cast<size_t>(n);
    blocksize = static_cast<size_t>(block);
    num_blocks = (nbytes + blocksize - 1) / blocksize;
    leftover = nbytes % blocksize;
    if (num_blocks > (src.size() - kHeaderNbytes) / 4) throw Error("blosc: corrupt frame (block table past the end)");
    may_split = !(flags & kDontSplit) && typesize <= kMaxSplits;
    ok = true;
  }

  size_t BlockNbytes(size_t b) const { return b + 1 == num_blocks && leftover > 0 ? leftover : blocksize; }

  // Decompresses block b into out (BlockNbytes(b) bytes: byte planes when shuffled). A range
  // ending inside the block needs only its first `end` bytes (unshuffled) or the first `end`
  // items of every byte plane (shuffled): streams are decoded only that far (lz4 can stop
  // early, not start late), and the rest of them is then not checked.
  void DecompressBlock(size_t b, std::byte *out, size_t end = SIZE_MAX) const {
    const bool last_partial = b + 1 == num_blocks && leftover > 0;
    const size_t block_nbytes = BlockNbytes(b);
    const size_t num_splits =
        may_split && !last_partial && block_nbytes / typesize >= kMinSplitNbytes ? typesize : 1;
    if (block_nbytes % num_splits != 0) Corrupt(b, "block size is not a multiple of the item size");
    const size_t split_nbytes = block_nbytes / num_splits;
    size_t wanted = split_nbytes;
    if (end < SIZE_MAX) {
      if (!shuffled || num_splits == typesize) {
        wanted = std::min(end, split_nbytes);  // one stream per byte plane, or plain bytes
      } else {
        wanted = (typesize - 1) * (block_nbytes / typesize) + end;  // all planes in one stream
      }
    }
    const int64_t cbytes = static_cast<int64_t>(src.size());
    int64_t offset = LoadLe32(src.data() + kHeaderNbytes + 4 * b);
    for (size_t s = 0; s < num_splits; ++s) {
      if (offset < 0 || offset > cbytes - 4) Corrupt(b, "stream offset outside the frame");
      const int32_t stream_nbytes = LoadLe32(src.data() + offset);
      offset += 4;
      if (stream_nbytes < 0 || stream_nbytes > cbytes - offset) Corrupt(b, "stream size past the end of the frame");
      const char *stream = reinterpret_cast<const char *>(src.data() + offset);
      if (static_cast<size_t>(stream_nbytes) == split_nbytes) {
        std::memcpy(out, stream, wanted);
      } else if (wanted == split_nbytes) {
        int got = LZ4_decompress_safe(stream, reinterpret_cast<char *>(out), stream_nbytes,
                                      static_cast<int>(split_nbytes));
        if (got < 0 || static_cast<size_t>(got) != split_nbytes) Corrupt(b, "lz4 stream does not decode to its size");
      } else {
        int got = LZ4_decompress_safe_partial(stream, reinterpret_cast<char *>(out), stream_nbytes,
                                              static_cast<int>(wanted), static_cast<int>(split_nbytes));
        if (got < 0 || static_cast<size_t>(got) < wanted) Corrupt(b, "lz4 stream ends early");
      }
      offset += stream_nbytes;
      out += split_nbytes;
    }
  }
};

thread_local ScratchBuffer block_scratch;

// Pieces handed to a DecodedBytesSink: small enough to stay in L1 beside the block's byte
// planes in L2, big enough that a row rarely spans more than two.
constexpr size_t kPieceNbytes = size_t{16} << 10;
thread_local ScratchBuffer piece_scratch;

// The checks DecodeBloscLz4FrameRange and its piecewise twin share: whole items only, from a
// frame of whole items (so every block holds whole items too).
bool HandlesRange(const Frame &frame, size_t byte_begin, size_t byte_end) {
  if (!frame.ok || byte_end > frame.nbytes || byte_end <= byte_begin) return false;
  return !frame.shuffled || (frame.nbytes % frame.typesize == 0 && byte_begin % frame.typesize == 0 &&
                             byte_end % frame.typesize == 0);
}

}  // namespace

bool DecodeBloscLz4Frame(ConstBytes src, Bytes dst) {
  Frame frame(src);
  if (!frame.ok || frame.nbytes != dst.size()) return false;
  std::byte *planes = frame.shuffled ? block_scratch.Get(frame.blocksize).data() : nullptr;
  for (size_t b = 0; b < frame.num_blocks; ++b) {
    std::byte *block_dst = dst.data() + b * frame.blocksize;
    if (!frame.shuffled) {
      frame.DecompressBlock(b, block_dst);
      continue;
    }
    frame.DecompressBlock(b, planes);
    Unshuffle(frame.typesize, frame.BlockNbytes(b), planes, block_dst);
  }
  return true;
}

bool DecodeBloscLz4FrameRange(ConstBytes src, size_t byte_begin, Bytes dst) {
  Frame frame(src);
  const size_t byte_end = byte_begin + dst.size();
  if (!HandlesRange(frame, byte_begin, byte_end)) return false;
  std::byte *scratch = block_scratch.Get(frame.blocksize).data();
  for (size_t b = byte_begin / frame.blocksize; b * frame.blocksize < byte_end; ++b) {
    const size_t block_begin = b * frame.blocksize, block_nbytes = frame.BlockNbytes(b);
    const size_t lo = std::max(byte_begin, block_begin), hi = std::min(byte_end, block_begin + block_nbytes);
    std::byte *out = dst.data() + (lo - byte_begin);
    if (!frame.shuffled) {
      if (lo == block_begin && hi == block_begin + block_nbytes) {
        frame.DecompressBlock(b, out);
      } else {
        frame.DecompressBlock(b, scratch, hi - block_begin);
        std::memcpy(out, scratch + (lo - block_begin), hi - lo);
      }
      continue;
    }
    // Each byte plane up to the last wanted item, then just the wanted items unshuffled
    // straight into place.
    frame.DecompressBlock(b, scratch, (hi - block_begin) / frame.typesize);
    UnshuffleItems(frame.typesize, block_nbytes, scratch, (lo - block_begin) / frame.typesize,
                   (hi - block_begin) / frame.typesize, out);
  }
  return true;
}

bool DecodeBloscLz4FrameRangeInPieces(ConstBytes src, size_t byte_begin, size_t byte_end,
                                      DecodedBytesSink sink) {
  Frame frame(src);
  if (!HandlesRange(frame, byte_begin, byte_end)) return false;
  std::byte *block = block_scratch.Get(frame.blocksize).data();
  const size_t typesize = frame.shuffled ? frame.typesize : 1;
  const size_t piece_items = kPieceNbytes / typesize;
  std::byte *piece = frame.shuffled ? piece_scratch.Get(piece_items * typesize).data() : nullptr;
  for (size_t b = byte_begin / frame.blocksize; b * frame.blocksize < byte_end; ++b) {
    const size_t block_begin = b * frame.blocksize, block_nbytes = frame.BlockNbytes(b);
    const size_t lo = std::max(byte_begin, block_begin), hi = std::min(byte_end, block_begin + block_nbytes);
    if (!frame.shuffled) {
      frame.DecompressBlock(b, block, hi - block_begin);
      sink(lo, ConstBytes(block + (lo - block_begin), hi - lo));
      continue;
    }
    const size_t first = (lo - block_begin) / typesize, end = (hi - block_begin) / typesize;
    frame.DecompressBlock(b, block, end);
    for (size_t i = first; i < end; i += piece_items) {
      const size_t n = std::min(piece_items, end - i);
      UnshuffleItems(typesize, block_nbytes, block, i, i + n, piece);
      sink(block_begin + i * typesize, ConstBytes(piece, n * typesize));
    }
  }
  return true;
}

}  // namespace biodali::codecs
