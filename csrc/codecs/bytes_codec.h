// The zarr v3 `bytes` codec (and the implicit equivalent of a v2 dtype's byte order): the
// encoded chunk is the elements in C order, little- or big-endian.
#pragma once

#include <cstddef>

#include "codecs/codec.h"

namespace biodali::codecs {

enum class Endian { kLittle, kBig };

class BytesCodec final : public ArrayToBytesCodec {
 public:
  BytesCodec(size_t elem_nbytes, Endian endian) : elem_nbytes_(elem_nbytes), endian_(endian) {}

  // Copies src (exactly dst.size() bytes, else Error) into dst in native byte order.
  void Decode(ConstBytes src, Bytes dst) const override;

  // Converts a chunk already placed in its destination to native byte order, so that the
  // codec before it (a decompressor, or a plain file read) can write straight into dst.
  void FinishInPlace(Bytes chunk) const;

  bool swaps_bytes() const;
  size_t elem_nbytes() const { return elem_nbytes_; }

 private:
  size_t elem_nbytes_;
  Endian endian_;
};

}  // namespace biodali::codecs
