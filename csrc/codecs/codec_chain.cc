#include "codecs/codec_chain.h"

#include "common/error.h"

namespace biodali::codecs {

CodecChain::CodecChain(BytesCodec array_to_bytes,
                       std::vector<std::unique_ptr<BytesToBytesCodec>> bytes_to_bytes)
    : array_to_bytes_(array_to_bytes), bytes_to_bytes_(std::move(bytes_to_bytes)) {}

void CodecChain::Decode(ConstBytes src, Bytes dst) const {
  if (bytes_to_bytes_.empty()) {
    array_to_bytes_.Decode(src, dst);
    return;
  }
  // Intermediate results ping-pong between two per-thread buffers: a step may return a view
  // of its input (crc32c strips 4 bytes in place), so each step writes into whichever buffer
  // does not hold its input.
  thread_local ScratchBuffer scratch[2];
  ConstBytes cur = src;
  int owner = -1;  // which scratch holds `cur`; -1 while it is still the caller's src
  for (size_t i = bytes_to_bytes_.size() - 1; i > 0; --i) {
    int target = owner == 0 ? 1 : 0;
    ConstBytes next = bytes_to_bytes_[i]->Decode(cur, &scratch[target]);
    if (next.data() != cur.data()) owner = target;
    cur = next;
  }
  bytes_to_bytes_[0]->DecodeInto(cur, dst);
  array_to_bytes_.FinishInPlace(dst);
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
