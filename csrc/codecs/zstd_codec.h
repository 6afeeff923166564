// zstd frames (v2 compressor and v3 codec `zstd`; the frame checksum, when present, is checked
// by libzstd itself).
#pragma once

#include "codecs/codec.h"

namespace biodali::codecs {

class ZstdCodec final : public BytesToBytesCodec {
 public:
  const char *name() const override { return "zstd"; }
  void DecodeInto(ConstBytes src, Bytes dst) const override;
  ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const override;
};

}  // namespace biodali::codecs
