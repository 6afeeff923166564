#include "codecs/blosc_lz4_frame.h"

#include <immintrin.h>
#include <lz4.h>

#include <cstdint>
#include <cstring>
#include <limits>

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

// dst[i * S + k] = src[k * n + i]: item i of the block gathered from byte plane k. 32 items per
// step; the unpacks interleave within 128-bit lanes, the permutes put the lanes in order.
__attribute__((target("avx2"))) size_t Unshuffle2Avx2(const std::byte *src, std::byte *dst, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i));
    __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + n + i));
    __m256i lo = _mm256_unpacklo_epi8(p0, p1);  // items 0-7 | 16-23
    __m256i hi = _mm256_unpackhi_epi8(p0, p1);  // items 8-15 | 24-31
    auto *out = reinterpret_cast<__m256i *>(dst + 2 * i);
    _mm256_storeu_si256(out, _mm256_permute2x128_si256(lo, hi, 0x20));
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(lo, hi, 0x31));
  }
  return i;
}

__attribute__((target("avx2"))) size_t Unshuffle4Avx2(const std::byte *src, std::byte *dst, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i));
    __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + n + i));
    __m256i p2 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + 2 * n + i));
    __m256i p3 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + 3 * n + i));
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

// c-blosc's unshuffle: whole items from the byte planes, then the block's trailing bytes (a
// block that is not a whole number of items) copied as they are.
void Unshuffle(size_t typesize, size_t block_nbytes, const std::byte *src, std::byte *dst) {
  const size_t n = block_nbytes / typesize;
  size_t i = typesize == 2 ? Unshuffle2Avx2(src, dst, n) : Unshuffle4Avx2(src, dst, n);
  for (; i < n; ++i)
    for (size_t k = 0; k < typesize; ++k) dst[i * typesize + k] = src[k * n + i];
  const size_t tail = block_nbytes - n * typesize;
  std::memcpy(dst + n * typesize, src + n * typesize, tail);
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");

}  // namespace

bool DecodeBloscLz4Frame(ConstBytes src, Bytes dst) {
  if (!kHasAvx2 || src.size() < kHeaderNbytes) return false;
  const auto version = static_cast<uint8_t>(src[0]);
  const auto flags = static_cast<uint8_t>(src[2]);
  const size_t typesize = static_cast<uint8_t>(src[3]);
  const bool shuffled = (flags & kByteShuffle) && typesize > 1;
  if (version != kFormatVersion || (flags >> 5) != kLz4Format ||
      (flags & (kMemcpyed | kBitShuffle | kReserved)) || (shuffled && typesize != 2 && typesize != 4))
    return false;
  const int32_t nbytes = LoadLe32(src.data() + 4), blocksize = LoadLe32(src.data() + 8),
                cbytes = LoadLe32(src.data() + 12);
  if (nbytes < 0 || static_cast<size_t>(nbytes) != dst.size() || cbytes < 0 ||
      static_cast<size_t>(cbytes) != src.size() || blocksize <= 0 || blocksize > nbytes)
    return false;  // c-blosc reports these
  if (nbytes == 0) return true;
  const size_t num_blocks = (static_cast<size_t>(nbytes) + blocksize - 1) / blocksize;
  const size_t leftover = static_cast<size_t>(nbytes) % blocksize;
  if (num_blocks > (src.size() - kHeaderNbytes) / 4) throw Error("blosc: corrupt frame (block table past the end)");
  const bool may_split = !(flags & kDontSplit) && typesize <= kMaxSplits;

  thread_local ScratchBuffer planes;
  std::byte *tmp = shuffled ? planes.Get(static_cast<size_t>(blocksize)).data() : nullptr;
  for (size_t b = 0; b < num_blocks; ++b) {
    const bool last_partial = b + 1 == num_blocks && leftover > 0;
    const size_t block_nbytes = last_partial ? leftover : static_cast<size_t>(blocksize);
    const size_t num_splits =
        may_split && !last_partial && block_nbytes / typesize >= kMinSplitNbytes ? typesize : 1;
    if (block_nbytes % num_splits != 0) Corrupt(b, "block size is not a multiple of the item size");
    const size_t split_nbytes = block_nbytes / num_splits;
    std::byte *block_dst = dst.data() + b * static_cast<size_t>(blocksize);
    std::byte *out = shuffled ? tmp : block_dst;
    int64_t offset = LoadLe32(src.data() + kHeaderNbytes + 4 * b);
    for (size_t s = 0; s < num_splits; ++s) {
      if (offset < 0 || offset > cbytes - 4) Corrupt(b, "stream offset outside the frame");
      const int32_t stream_nbytes = LoadLe32(src.data() + offset);
      offset += 4;
      if (stream_nbytes < 0 || stream_nbytes > cbytes - offset) Corrupt(b, "stream size past the end of the frame");
      const char *stream = reinterpret_cast<const char *>(src.data() + offset);
      if (static_cast<size_t>(stream_nbytes) == split_nbytes) {
        std::memcpy(out, stream, split_nbytes);
      } else {
        int got = LZ4_decompress_safe(stream, reinterpret_cast<char *>(out), stream_nbytes,
                                      static_cast<int>(split_nbytes));
        if (got < 0 || static_cast<size_t>(got) != split_nbytes) Corrupt(b, "lz4 stream does not decode to its size");
      }
      offset += stream_nbytes;
      out += split_nbytes;
    }
    if (shuffled) Unshuffle(typesize, block_nbytes, tmp, block_dst);
  }
  return true;
}

}  // namespace biodali::codecs
