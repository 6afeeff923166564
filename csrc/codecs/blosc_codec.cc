#include "codecs/blosc_codec.h"

#include <blosc.h>

#include "common/error.h"

namespace biodali::codecs {

size_t BloscCodec::CheckedDecodedNbytes(ConstBytes src) {
  if (src.size() < BLOSC_MIN_HEADER_LENGTH) {
    throw Error(StrCat("blosc: frame of ", src.size(), " bytes is shorter than the ",
                       BLOSC_MIN_HEADER_LENGTH, "-byte header (truncated?)"));
  }
  size_t nbytes = 0, cbytes = 0, blocksize = 0;
  blosc_cbuffer_sizes(src.data(), &nbytes, &cbytes, &blocksize);
  // blosc_cbuffer_validate compares the header's compressed size with the buffer we hold; a
  // mismatch means the file was truncated (or padded) and decoding would read out of bounds.
  size_t validated_nbytes = 0;
  if (blosc_cbuffer_validate(src.data(), src.size(), &validated_nbytes) != 0) {
    throw Error(StrCat("blosc: truncated or corrupt frame (header says ", cbytes,
                       " compressed bytes, have ", src.size(), ")"));
  }
  return validated_nbytes;
}

void BloscCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  size_t nbytes = CheckedDecodedNbytes(src);
  if (nbytes != dst.size()) {
    throw Error(StrCat("blosc: frame decodes to ", nbytes, " bytes, expected ", dst.size()));
  }
  if (nbytes == 0) return;
  // The _ctx variant keeps its state on the stack, so concurrent calls are safe; one internal
  // thread because our own pool already decodes chunks in parallel.
  int decoded = blosc_decompress_ctx(src.data(), dst.data(), dst.size(), 1);
  if (decoded < 0 || static_cast<size_t>(decoded) != nbytes) {
    throw Error(StrCat("blosc: corrupt compressed data (decompressor returned ", decoded, ")"));
  }
}

ConstBytes BloscCodec::Decode(ConstBytes src, ScratchBuffer *scratch) const {
  Bytes out = scratch->Get(CheckedDecodedNbytes(src));
  DecodeInto(src, out);
  return out;
}

}  // namespace biodali::codecs
