// blosc (v1 frames, as written by numcodecs and zarr's blosc codec). The frame header records
// the compressor (lz4, lz4hc, zstd, zlib, blosclz) and shuffle mode, so decoding needs no
// configuration.
#pragma once

#include "codecs/codec.h"

namespace biodali::codecs {

class BloscCodec final : public BytesToBytesCodec {
 public:
  const char *name() const override { return "blosc"; }
  void DecodeInto(ConstBytes src, Bytes dst) const override;
  ConstBytes Decode(ConstBytes src, ScratchBuffer *scratch) const override;

  // Decodes bytes [byte_begin, byte_begin + dst.size()) of a frame that must decode to
  // exactly `decoded_nbytes` bytes (else Error, as DecodeInto), decompressing only the blosc
  // blocks that cover them.
  void DecodeRangeInto(ConstBytes src, size_t decoded_nbytes, size_t byte_begin,
                       Bytes dst) const;

  // The bytes of a blosc1 frame that decoding [byte_begin, byte_end) reads beyond its header
  // and block table: [*span_begin, *span_end) (frame offsets), the compressed blocks that hold
  // the range. `head` is the frame's first bytes; false when they do not tell (too short, an
  // extended header): then the whole frame is needed. Lets a reader fetch only those bytes.
  static bool SelectiveSpan(ConstBytes head, size_t byte_begin, size_t byte_end, size_t *span_begin,
                            size_t *span_end);

  // Validates the frame against its length and that it decodes to `decoded_nbytes` bytes.
  static void CheckFrame(ConstBytes src, size_t decoded_nbytes);
  // DecodeInto without biodali's lz4 frame decoder (tests compare the two).
  static void DecodeWithCBlosc(ConstBytes src, Bytes dst);

 private:
  // Validates the frame against its length and returns the decoded size from the header.
  static size_t CheckedDecodedNbytes(ConstBytes src);
  // c-blosc's decompression of a frame CheckFrame has accepted for dst.
  static void DecompressCheckedFrame(ConstBytes src, Bytes dst);
};

}  // namespace biodali::codecs
