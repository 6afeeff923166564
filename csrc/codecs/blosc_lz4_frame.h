// A decoder for the blosc1 frames zarr stores hold most often (lz4, byte shuffle of 2- or
// 4-byte items, or no shuffle: what anndata, zarr-python and annbatch write by default), with
// an AVX2 unshuffle. c-blosc 1.21 as packaged by Debian unshuffles with SSE2 only, which
// costs about a third as much as lz4 itself. Every other frame goes to c-blosc.
#pragma once

#include "codecs/codec.h"

namespace biodali::codecs {

// Decodes a frame that BloscCodec has validated (header sizes match src and dst) into dst.
// Returns false, having written nothing, when the frame is not one this decoder handles
// (other compressor, bitshuffle, other item size, no AVX2); throws Error on corrupt data.
bool DecodeBloscLz4Frame(ConstBytes src, Bytes dst);

// Decodes bytes [byte_begin, byte_begin + dst.size()) of a validated frame, decompressing only
// the blocks that hold them and unshuffling only the wanted items. Returns false, having
// written nothing, for frames DecodeBloscLz4Frame does not handle and for ranges that are not
// whole items of a frame of whole items.
bool DecodeBloscLz4FrameRange(ConstBytes src, size_t byte_begin, Bytes dst);

// DecodeBloscLz4FrameRange for bytes [byte_begin, byte_end), handed to `sink` in pieces of at
// most 16 KiB as they are unshuffled, instead of into one buffer. Returns false, having
// called nothing, in the same cases (and for an empty range).
bool DecodeBloscLz4FrameRangeInPieces(ConstBytes src, size_t byte_begin, size_t byte_end,
                                      DecodedBytesSink sink);

}  // namespace biodali::codecs
