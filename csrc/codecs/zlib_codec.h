// DEFLATE streams via zlib: `gzip` (v2 compressor and v3 codec; gzip wrapper) and `zlib` (v2
// compressor, numcodecs.zlib in v3; zlib wrapper). The two differ only in the wrapper, so they
// share one inflate loop.
#pragma once

#include "codecs/codec.h"

namespace biodali::codecs {

class GzipCodec final : public BytesToBytesCodec {
 public:
  const char *name() const override { return "gzip"; }
  void DecodeInto(ConstBytes src, Bytes dst) const override;
  ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const override;
};

class ZlibCodec final : public BytesToBytesCodec {
 public:
  const char *name() const override { return "zlib"; }
  void DecodeInto(ConstBytes src, Bytes dst) const override;
  ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const override;
};

}  // namespace biodali::codecs
