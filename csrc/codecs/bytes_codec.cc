#include "codecs/bytes_codec.h"

#include <bit>
#include <cstdint>
#include <cstring>

#include "common/error.h"

namespace biodali::codecs {
namespace {

template <typename T>
void SwapAll(Bytes chunk) {
  std::byte *p = chunk.data();
  size_t num_elements = chunk.size() / sizeof(T);
  for (size_t i = 0; i < num_elements; ++i, p += sizeof(T)) {
    T v;
    std::memcpy(&v, p, sizeof(T));  // chunks carry no alignment guarantee
    v = static_cast<T>(__builtin_bswap64(static_cast<uint64_t>(v)) >> (64 - 8 * sizeof(T)));
    std::memcpy(p, &v, sizeof(T));
  }
}

}  // namespace

bool BytesCodec::swaps_bytes() const {
  bool stored_big = endian_ == Endian::kBig;
  bool native_big = std::endian::native == std::endian::big;
  return elem_nbytes_ > 1 && stored_big != native_big;
}

void BytesCodec::FinishInPlace(Bytes chunk) const {
  if (!swaps_bytes()) return;
  switch (elem_nbytes_) {
    case 2: SwapAll<uint16_t>(chunk); break;
    case 4: SwapAll<uint32_t>(chunk); break;
    case 8: SwapAll<uint64_t>(chunk); break;
    default: throw Error(StrCat("bytes: cannot swap elements of ", elem_nbytes_, " bytes"));
  }
}

void BytesCodec::Decode(ConstBytes src, Bytes dst) const {
  if (src.size() != dst.size()) {
    throw Error(StrCat("chunk holds ", src.size(), " bytes, expected ", dst.size(),
                       " (truncated or wrong chunk size?)"));
  }
  if (!src.empty()) std::memcpy(dst.data(), src.data(), src.size());
  FinishInPlace(dst);
}

}  // namespace biodali::codecs
