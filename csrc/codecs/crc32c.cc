#include "codecs/crc32c.h"

#include <array>
#include <cstring>

#include "common/error.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace biodali::codecs {
namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78u;

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes, so eight
// input bytes are folded per step with eight independent lookups.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (kPolyReflected & (0u - (crc & 1u)));
    t[0][b] = crc;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    for (int k = 1; k < 8; ++k) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

uint32_t LoadLE32(const unsigned char *p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint32_t Crc32cPortable(const unsigned char *p, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  while (n >= 8) {
    uint32_t lo = LoadLE32(p) ^ crc;
    uint32_t hi = LoadLE32(p + 4);
    crc = kTables[7][lo & 0xff] ^ kTables[6][(lo >> 8) & 0xff] ^ kTables[5][(lo >> 16) & 0xff] ^
          kTables[4][lo >> 24] ^ kTables[3][hi & 0xff] ^ kTables[2][(hi >> 8) & 0xff] ^
          kTables[1][(hi >> 16) & 0xff] ^ kTables[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) crc = (crc >> 8) ^ kTables[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(const unsigned char *p, size_t n) {
  uint64_t crc = 0xFFFFFFFFu;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // x86 is little-endian, as the CRC's byte order requires
    crc = _mm_crc32_u64(crc, word);
    p += 8;
    n -= 8;
  }
  uint32_t crc32 = static_cast<uint32_t>(crc);
  while (n-- > 0) crc32 = _mm_crc32_u8(crc32, *p++);
  return ~crc32;
}

bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t Crc32c(ConstBytes data, Crc32cImpl impl) {
  const auto *p = reinterpret_cast<const unsigned char *>(data.data());
#if defined(__x86_64__)
  if (impl != Crc32cImpl::kPortable && HasSse42()) return Crc32cSse42(p, data.size());
#else
  (void)impl;
#endif
  return Crc32cPortable(p, data.size());
}

ConstBytes Crc32cCodec::Verify(ConstBytes src) {
  if (src.size() < static_cast<size_t>(kChecksumNbytes)) {
    throw Error(StrCat("crc32c: ", src.size(), " bytes cannot hold the 4-byte checksum"));
  }
  ConstBytes payload = src.first(src.size() - kChecksumNbytes);
  uint32_t stored = LoadLE32(reinterpret_cast<const unsigned char *>(src.data() + payload.size()));
  uint32_t computed = Crc32c(payload);
  if (stored != computed) {
    throw Error(StrCat("crc32c: checksum mismatch (stored 0x", std::hex, stored,
                       ", computed 0x", computed, "): the data is corrupt"));
  }
  return payload;
}

void Crc32cCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  ConstBytes payload = Verify(src);
  if (payload.size() != dst.size()) {
    throw Error(StrCat("crc32c: payload is ", payload.size(), " bytes, expected ", dst.size()));
  }
  if (!payload.empty()) std::memcpy(dst.data(), payload.data(), payload.size());
}

ConstBytes Crc32cCodec::Decode(ConstBytes src, ScratchBuffer *) const { return Verify(src); }

}  // namespace biodali::codecs
