#include "common/dtype.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/error.h"

namespace biodali {
namespace {

struct DTypeInfo {
  DType dtype;
  const char *name;
  size_t size;
  char kind;  // numpy kind letter: b, i, u, f
};

constexpr DTypeInfo kInfos[] = {
    {DType::kBool, "bool", 1, 'b'},       {DType::kInt8, "int8", 1, 'i'},
    {DType::kInt16, "int16", 2, 'i'},     {DType::kInt32, "int32", 4, 'i'},
    {DType::kInt64, "int64", 8, 'i'},     {DType::kUInt8, "uint8", 1, 'u'},
    {DType::kUInt16, "uint16", 2, 'u'},   {DType::kUInt32, "uint32", 4, 'u'},
    {DType::kUInt64, "uint64", 8, 'u'},   {DType::kFloat16, "float16", 2, 'f'},
    {DType::kFloat32, "float32", 4, 'f'}, {DType::kFloat64, "float64", 8, 'f'},
};

const DTypeInfo &Info(DType dtype) { return kInfos[static_cast<int>(dtype)]; }

// IEEE 754 binary16 <-> binary32, round to nearest even; no hardware half type needed.
float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xff;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  int32_t e = static_cast<int32_t>(exp) - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | static_cast<uint32_t>(e) << 10 | mant >> 13;
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;
  return static_cast<uint16_t>(half);
}

struct Half { uint16_t bits; };

template <typename T> double ToDouble(T v) { return static_cast<double>(v); }
template <> double ToDouble<Half>(Half v) { return HalfToFloat(v.bits); }
template <typename T> T FromDouble(double v) { return static_cast<T>(v); }
template <> Half FromDouble<Half>(double v) { return Half{FloatToHalf(static_cast<float>(v))}; }
template <> bool FromDouble<bool>(double v) { return v != 0; }

template <typename Src, typename Dst>
void ConvertTyped(const void *src, void *dst, size_t n) {
  const Src *s = static_cast<const Src *>(src);
  Dst *d = static_cast<Dst *>(dst);
  if constexpr (std::is_arithmetic_v<Src> && std::is_arithmetic_v<Dst>) {
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<Dst>(s[i]);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = FromDouble<Dst>(ToDouble(s[i]));
  }
}

template <typename F>
void Dispatch(DType dtype, F &&f) {
  switch (dtype) {
    case DType::kBool: f(bool{}); break;
    case DType::kInt8: f(int8_t{}); break;
    case DType::kInt16: f(int16_t{}); break;
    case DType::kInt32: f(int32_t{}); break;
    case DType::kInt64: f(int64_t{}); break;
    case DType::kUInt8: f(uint8_t{}); break;
    case DType::kUInt16: f(uint16_t{}); break;
    case DType::kUInt32: f(uint32_t{}); break;
    case DType::kUInt64: f(uint64_t{}); break;
    case DType::kFloat16: f(Half{}); break;
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
  }
}

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }
const char *DTypeName(DType dtype) { return Info(dtype).name; }
bool IsIntegral(DType dtype) { return Info(dtype).kind != 'f'; }

bool ParseDTypeName(std::string_view name, DType *dtype) {
  for (const auto &info : kInfos) {
    if (name == info.name) {
      *dtype = info.dtype;
      return true;
    }
  }
  return false;
}

bool ParseTypestr(std::string_view typestr, DType *dtype, bool *big_endian) {
  if (typestr.size() < 3) return false;
  char order = typestr[0];
  if (order != '<' && order != '>' && order != '|' && order != '=') return false;
  char kind = typestr[1];
  size_t size = 0;
  for (char c : typestr.substr(2)) {
    if (c < '0' || c > '9') return false;
    size = size * 10 + static_cast<size_t>(c - '0');
  }
  for (const auto &info : kInfos) {
    if (info.kind == kind && info.size == size) {
      *dtype = info.dtype;
      *big_endian = order == '>' && size > 1;
      return true;
    }
  }
  return false;
}

// The common widening on the hot path (CSR indices stored as uint16 -> int32 outputs), built
// for AVX2 too and picked at run time: the baseline x86-64 target only has SSE2.
__attribute__((target_clones("avx2", "default")))
static void WidenU16ToI32(const uint16_t *src, int32_t *dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
}

void ConvertElements(const void *src, DType src_dtype, void *dst, DType dst_dtype,
                     size_t num_elements) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, num_elements * DTypeSize(src_dtype));
    return;
  }
  if (src_dtype == DType::kUInt16 && dst_dtype == DType::kInt32) {
    WidenU16ToI32(static_cast<const uint16_t *>(src), static_cast<int32_t *>(dst), num_elements);
    return;
  }
  Dispatch(src_dtype, [&](auto s) {
    Dispatch(dst_dtype, [&](auto d) {
      ConvertTyped<decltype(s), decltype(d)>(src, dst, num_elements);
    });
  });
}

namespace {

// Scalar up to a 32-byte aligned destination, then 32-byte streaming stores, then the tail.
__attribute__((target("avx2"))) void StreamBytesAvx2(const std::byte *src, std::byte *dst, size_t n) {
  size_t head = (32 - reinterpret_cast<uintptr_t>(dst) % 32) % 32;
  if (head >= n) {
    std::memcpy(dst, src, n);
    return;
  }
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 32 <= n; i += 32)
    _mm256_stream_si256(reinterpret_cast<__m256i *>(dst + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i *>(src + i)));
  std::memcpy(dst + i, src + i, n - i);
}

// uint16 -> int32 with streaming stores; returns the largest value (one max per 8 values, so
// plain widening uses it too).
__attribute__((target("avx2"))) uint16_t StreamWidenU16ToI32MaxAvx2(const uint16_t *src, int32_t *dst,
                                                                     size_t n) {
  uint16_t hi = 0;
  size_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; ++i) {
    dst[i] = src[i];
    hi = std::max(hi, src[i]);
  }
  __m128i max8 = _mm_setzero_si128();
  for (; i + 8 <= n; i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i *>(src + i));
    max8 = _mm_max_epu16(max8, v);
    _mm256_stream_si256(reinterpret_cast<__m256i *>(dst + i), _mm256_cvtepu16_epi32(v));
  }
  for (; i < n; ++i) {
    dst[i] = src[i];
    hi = std::max(hi, src[i]);
  }
  alignas(16) uint16_t lanes[8];
  _mm_store_si128(reinterpret_cast<__m128i *>(lanes), max8);
  for (uint16_t lane : lanes) hi = std::max(hi, lane);
  return hi;
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");

}  // namespace

void StreamFence() {
  if (kHasAvx2) _mm_sfence();
}

uint16_t StreamWidenU16ToI32Max(const uint16_t *src, int32_t *dst, size_t num_elements) {
  if (kHasAvx2) return StreamWidenU16ToI32MaxAvx2(src, dst, num_elements);
  uint16_t hi = 0;
  for (size_t i = 0; i < num_elements; ++i) {
    dst[i] = src[i];
    hi = std::max(hi, src[i]);
  }
  return hi;
}

void StreamElements(const void *src, DType src_dtype, void *dst, DType dst_dtype,
                    size_t num_elements) {
  if (kHasAvx2 && src_dtype == dst_dtype) {
    StreamBytesAvx2(static_cast<const std::byte *>(src), static_cast<std::byte *>(dst),
                    num_elements * DTypeSize(src_dtype));
  } else if (kHasAvx2 && src_dtype == DType::kUInt16 && dst_dtype == DType::kInt32) {
    StreamWidenU16ToI32MaxAvx2(static_cast<const uint16_t *>(src), static_cast<int32_t *>(dst), num_elements);
  } else {
    ConvertElements(src, src_dtype, dst, dst_dtype, num_elements);
  }
}

}  // namespace biodali
