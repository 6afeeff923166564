#include "codecs/codec_chain.h"

#include <cstring>

#include "codecs/blosc_codec.h"
#include "codecs/blosc_lz4_frame.h"
#include "codecs/crc32c.h"
#include "common/error.h"

namespace biodali::codecs {

ConstBytes DecodeUnsized(std::span<const std::unique_ptr<BytesToBytesCodec>> codecs,
                         ConstBytes src, ScratchBuffer (&scratch)[2]) {
  ConstBytes cur = src;
  int owner = -1;  // which scratch holds `cur`; -1 while it is still the caller's src
  for (size_t i = codecs.size(); i-- > 0;) {
    int target = owner == 0 ? 1 : 0;
    ConstBytes next = codecs[i]->Decode(cur, &scratch[target]);
    if (next.data() != cur.data()) owner = target;
    cur = next;
  }
  return cur;
}

CodecChain::CodecChain(BytesCodec array_to_bytes,
                       std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes)
    : array_to_bytes_(array_to_bytes), bytes_to_bytes_(std::move(bytes_to_bytes)) {
  if (bytes_to_bytes_.empty()) {
    range_mode_ = RangeMode::kPlain;
    return;
  }
  // blosc frames can be decoded block by block; checksums after blosc only need verifying.
  blosc_ = dynamic_cast<const BloscCodec *>(bytes_to_bytes_[0].get());
  bool rest_are_checksums = true;
  for (size_t i = 1; i < bytes_to_bytes_.size(); ++i) {
    rest_are_checksums &= dynamic_cast<const Crc32cCodec *>(bytes_to_bytes_[i].get()) != nullptr;
  }
  if (blosc_ != nullptr && rest_are_checksums) range_mode_ = RangeMode::kBlosc;
}

void CodecChain::Decode(ConstBytes src, Bytes dst) const {
  if (bytes_to_bytes_.empty()) {
    array_to_bytes_.Decode(src, dst);
    return;
  }
  thread_local ScratchBuffer scratch[2];
  ConstBytes cur = DecodeUnsized(std::span(bytes_to_bytes_).subspan(1), src, scratch);
  bytes_to_bytes_[0]->DecodeInto(cur, dst);
  array_to_bytes_.FinishInPlace(dst);
}

void CodecChain::DecodeRange(ConstBytes src, size_t chunk_nbytes, size_t byte_begin,
                             Bytes dst) const {
  if (byte_begin > chunk_nbytes || dst.size() > chunk_nbytes - byte_begin) {
    throw Error(StrCat("byte range [", byte_begin, ", ", byte_begin + dst.size(),
                       ") is outside a chunk of ", chunk_nbytes, " bytes"));
  }
  switch (range_mode_) {
    case RangeMode::kPlain:
      if (src.size() != chunk_nbytes) {
        throw Error(StrCat("chunk holds ", src.size(), " bytes, expected ", chunk_nbytes,
                           " (truncated or wrong chunk size?)"));
      }
      if (!dst.empty()) std::memcpy(dst.data(), src.data() + byte_begin, dst.size());
      break;
    case RangeMode::kBlosc: {
      thread_local ScratchBuffer scratch[2];
      ConstBytes frame = DecodeUnsized(std::span(bytes_to_bytes_).subspan(1), src, scratch);
      blosc_->DecodeRangeInto(frame, chunk_nbytes, byte_begin, dst);
      break;
    }
    case RangeMode::kFullDecode: {
      thread_local ScratchBuffer whole;
      Bytes chunk = whole.Get(chunk_nbytes);
      Decode(src, chunk);  // already native endian
      if (!dst.empty()) std::memcpy(dst.data(), chunk.data() + byte_begin, dst.size());
      return;
    }
  }
  // Ranges hold whole elements, so swapping them in place is the same as swapping the chunk.
  array_to_bytes_.FinishInPlace(dst);
}

void CodecChain::DecodeRangeInPieces(ConstBytes src, size_t chunk_nbytes, size_t byte_begin,
                                     size_t byte_end, DecodedBytesSink sink) const {
  if (byte_begin > byte_end || byte_end > chunk_nbytes) {
    throw Error(StrCat("byte range [", byte_begin, ", ", byte_end, ") is outside a chunk of ",
                       chunk_nbytes, " bytes"));
  }
  if (byte_begin == byte_end) return;
  thread_local ScratchBuffer range;
  if (range_mode_ == RangeMode::kBlosc && !array_to_bytes_.swaps_bytes()) {
    thread_local ScratchBuffer scratch[2];
    ConstBytes frame = DecodeUnsized(std::span(bytes_to_bytes_).subspan(1), src, scratch);
    BloscCodec::CheckFrame(frame, chunk_nbytes);
    if (DecodeBloscLz4FrameRangeInPieces(frame, byte_begin, byte_end, sink)) return;
    // Frames biodali's lz4 decoder does not handle: the range in one piece, from c-blosc.
    Bytes out = range.Get(byte_end - byte_begin);
    blosc_->DecodeRangeInto(frame, chunk_nbytes, byte_begin, out);
    sink(byte_begin, out);
    return;
  }
  Bytes out = range.Get(byte_end - byte_begin);
  DecodeRange(src, chunk_nbytes, byte_begin, out);
  sink(byte_begin, out);
}

int64_t CodecChain::FixedEncodedNbytes(int64_t decoded_nbytes) const {
  int64_t nbytes = decoded_nbytes;
  for (const auto &codec : bytes_to_bytes_) {
    int64_t overhead = codec->fixed_overhead_nbytes();
    if (overhead < 0) return -1;
    nbytes += overhead;
  }
  return nbytes;
}

std::string CodecChain::Describe() const {
  std::string out = "bytes";
  for (const auto &codec : bytes_to_bytes_) out += StrCat(" -> ", codec->name());
  return out;
}

}  // namespace biodali::codecs
