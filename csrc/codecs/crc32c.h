// CRC-32C (Castagnoli) and the zarr v3 `crc32c` codec: a 4-byte little-endian checksum of the
// payload appended after it. Decoding verifies and strips it without copying.
#pragma once

#include <cstdint>

#include "codecs/codec.h"

namespace biodali::codecs {

enum class Crc32cImpl { kAuto, kPortable, kHardware };

// CRC-32C of `data` (init and final xor 0xFFFFFFFF, as zarr and iSCSI use). kAuto picks the
// SSE4.2 instruction when the CPU has it; kHardware on a CPU without it falls back to kPortable.
uint32_t Crc32c(ConstBytes data, Crc32cImpl impl = Crc32cImpl::kAuto);

class Crc32cCodec final : public BytesToBytesCodec {
 public:
  static constexpr int64_t kChecksumNbytes = 4;

  const char *name() const override { return "crc32c"; }
  void DecodeInto(ConstBytes src, Bytes dst) const override;
  ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const override;
  int64_t fixed_overhead_nbytes() const override { return kChecksumNbytes; }

 private:
  // Checks the trailing checksum and returns the payload (a view into src).
  static ConstBytes Verify(ConstBytes src);
};

}  // namespace biodali::codecs
