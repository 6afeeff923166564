// Arithmetic shared bit-for-bit by the CPU twins and the CUDA kernels: a counter-based RNG
// (Philox4x32-10), Bernoulli thresholds, numpy's linear quantile and half/bfloat16 rounding.
// Everything here is integer arithmetic or correctly rounded IEEE operations (no FMA: the build
// uses -ffp-contract=off and nvcc -fmad=false), so both sides compute identical results.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <math.h>

#if defined(__CUDACC__)
#define BIODALI_HD __host__ __device__ __forceinline__
#else
#define BIODALI_HD inline
#endif

namespace biodali::expression {

struct Uint4 {
  uint32_t x, y, z, w;
};

BIODALI_HD uint32_t MulHi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
BIODALI_HD Uint4 Philox4x32(Uint4 counter, uint32_t key0, uint32_t key1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0 = MulHi32(0xD2511F53u, counter.x), lo0 = 0xD2511F53u * counter.x;
    uint32_t hi1 = MulHi32(0xCD9E8D57u, counter.z), lo1 = 0xCD9E8D57u * counter.z;
    counter = {hi1 ^ counter.y ^ key0, lo1, hi0 ^ counter.w ^ key1, lo0};
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return counter;
}

BIODALI_HD uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Random draws of one row (sample) of one batch. The key mixes the operator's seed with the
// batch counter, so every batch (and so every epoch) gets fresh draws; the counter holds the
// sample's position in the batch, the element and the draw within the element.
struct RowRandom {
  uint32_t key0, key1, sample, stream;

  BIODALI_HD static RowRandom For(int64_t seed, uint64_t batch_counter, uint32_t sample,
                                  uint32_t stream) {
    uint64_t key = SplitMix64(static_cast<uint64_t>(seed) ^ SplitMix64(batch_counter));
    return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), sample, stream};
  }

  // The `draw`-th 32-bit draw of element `element`.
  BIODALI_HD uint32_t Draw(uint32_t element, uint64_t draw) const {
    Uint4 r = Philox4x32({static_cast<uint32_t>(draw >> 2), element, sample, stream}, key0, key1);
    switch (draw & 3) {
      case 0: return r.x;
      case 1: return r.y;
      case 2: return r.z;
      default: return r.w;
    }
  }

  // How many of `count` Bernoulli(threshold / 2^32) trials succeed (one draw per trial).
  BIODALI_HD uint64_t CountSuccesses(uint32_t element, uint64_t count, uint64_t threshold) const {
    uint64_t kept = 0;
    for (uint64_t base = 0; base < count; base += 4) {
      Uint4 r = Philox4x32({static_cast<uint32_t>(base >> 2), element, sample, stream}, key0, key1);
      uint64_t left = count - base;
      kept += (r.x < threshold);
      if (left > 1) kept += (r.y < threshold);
      if (left > 2) kept += (r.z < threshold);
      if (left > 3) kept += (r.w < threshold);
    }
    return kept;
  }
};

// Largest count downsample thins: it draws once per count, so the bound caps the time a row takes.
constexpr uint64_t kMaxCount = uint64_t{1} << 24;

template <typename T>
BIODALI_HD bool IsNegativeOrNaN(T v) {
  if constexpr (std::is_floating_point_v<T>) return !(v >= 0);
  else if constexpr (std::is_signed_v<T>) return v < 0;
  else return false;
}

// The count a value holds; false for what downsample cannot thin (negative, NaN, fractional,
// above kMaxCount).
template <typename T>
BIODALI_HD bool ToCount(T v, uint64_t *count) {
  if constexpr (std::is_floating_point_v<T>) {
    if (!(v >= 0) || v != floor(v) || v > kMaxCount) return false;
  } else {
    if (IsNegativeOrNaN(v) || static_cast<uint64_t>(v) > kMaxCount) return false;
  }
  *count = static_cast<uint64_t>(v);
  return true;
}

// A uint32 draw u succeeds with probability p when u < threshold (p = 1 -> always).
BIODALI_HD uint64_t ProbabilityThreshold(double p) {
  if (!(p > 0.0)) return 0;
  if (p >= 1.0) return uint64_t{1} << 32;
  return static_cast<uint64_t>(p * 4294967296.0);
}

// Binomial thinning probability of a row: `fraction` if >= 0, else target_total / total
// (1 when the row already has <= target_total counts).
BIODALI_HD double ThinningProbability(uint64_t row_total, double fraction, double target_total) {
  if (fraction >= 0) return fraction;
  if (row_total == 0 || static_cast<double>(row_total) <= target_total) return 1.0;
  return target_total / static_cast<double>(row_total);
}

// numpy.quantile(sorted[0:n], q, method="linear") with numpy's own arithmetic (numpy 2.x:
// virtual index (n-1)*q, then _lerp, which interpolates from the nearer end).
BIODALI_HD double LinearQuantile(const double *sorted, int64_t n, double q) {
  double virtual_index = static_cast<double>(n - 1) * q;
  if (virtual_index >= static_cast<double>(n - 1)) return sorted[n - 1];
  double previous = floor(virtual_index);
  int64_t lo = static_cast<int64_t>(previous);
  double a = sorted[lo], b = sorted[lo + 1];
  double t = virtual_index - previous;
  double diff = b - a;
  return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

// numpy.linspace(0, 1, num)[k].
BIODALI_HD double LinspaceUnit(int k, int num) {
  if (num <= 1) return 0.0;
  if (k == num - 1) return 1.0;
  double step = 1.0 / static_cast<double>(num - 1);
  return static_cast<double>(k) * step;
}

// float -> IEEE half / bfloat16 bits, round to nearest even (as __float2half_rn and
// __float2bfloat16_rn do on the GPU).
BIODALI_HD uint16_t FloatToBFloat16Bits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

BIODALI_HD uint16_t FloatToHalfBits(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof(bits));
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (abs_bits >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow -> inf
  if (abs_bits < 0x38800000u) {  // subnormal half (or zero)
    if (abs_bits < 0x33000000u) return static_cast<uint16_t>(sign);  // below half the smallest
    uint32_t exponent = abs_bits >> 23;
    uint32_t mantissa = (abs_bits & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - exponent;  // 14 + (112 - (exponent - 127)) - 1 ... kept integer
    uint32_t half_mantissa = mantissa >> (shift - 0);
    uint32_t remainder = mantissa & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) ++half_mantissa;
    return static_cast<uint16_t>(sign | half_mantissa);
  }
  uint32_t rounded = abs_bits + 0x0FFFu + ((abs_bits >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

BIODALI_HD float BitsToFloat(uint32_t bits) {
  float out;
  memcpy(&out, &bits, sizeof(out));
  return out;
}

BIODALI_HD float HalfBitsToFloat(uint16_t half) {
  uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1Fu, mantissa = half & 0x3FFu;
  if (exponent == 31) return BitsToFloat(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return BitsToFloat(sign);
    int32_t e = -14;  // subnormal: shift the leading one into the implicit bit
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      --e;
    }
    return BitsToFloat(sign | (static_cast<uint32_t>(e + 127) << 23) | ((mantissa & 0x3FFu) << 13));
  }
  return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

BIODALI_HD float BFloat16BitsToFloat(uint16_t bits) { return BitsToFloat(static_cast<uint32_t>(bits) << 16); }

}  // namespace biodali::expression
