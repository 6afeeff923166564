#include "codecs/vlen_utf8_codec.h"

#include "codecs/codec_chain.h"
#include "common/error.h"

namespace biodali::codecs {
namespace {

uint32_t LoadLE32(const std::byte *p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

}  // namespace

void VlenUtf8Codec::Decode(ConstBytes src, int64_t num_items, int64_t num_valid,
                           std::vector<std::string> *out) {
  if (src.size() < 4) {
    throw Error(StrCat("vlen-utf8: truncated data: chunk of ", src.size(),
                       " bytes cannot hold the 4-byte item count"));
  }
  const int64_t count = LoadLE32(src.data());
  if (count != num_items && count != num_valid) {
    throw Error(StrCat("vlen-utf8: item count mismatch: chunk holds ", count,
                       " items, expected ", num_items,
                       num_valid != num_items ? StrCat(" (or ", num_valid, ")") : ""));
  }
  size_t pos = 4;
  for (int64_t i = 0; i < count; ++i) {
    if (src.size() - pos < 4) {
      throw Error(StrCat("vlen-utf8: truncated data: chunk ends (", src.size(),
                         " bytes) before the length of item ", i, " of ", count));
    }
    const size_t len = LoadLE32(src.data() + pos);
    pos += 4;
    if (src.size() - pos < len) {
      throw Error(StrCat("vlen-utf8: truncated data: item ", i, " of ", count, " needs ", len,
                         " bytes at offset ", pos, ", the chunk has ", src.size() - pos));
    }
    if (i < num_valid) out->emplace_back(reinterpret_cast<const char *>(src.data() + pos), len);
    pos += len;
  }
  if (pos != src.size()) {
    throw Error(StrCat("vlen-utf8: ", src.size() - pos, " bytes follow the last of ", count,
                       " items (corrupt chunk)"));
  }
}

void StringCodecChain::Decode(ConstBytes src, int64_t num_items, int64_t num_valid,
                              std::vector<std::string> *out) const {
  thread_local ScratchBuffer scratch[2];
  VlenUtf8Codec::Decode(DecodeUnsized(bytes_to_bytes_, src, scratch), num_items, num_valid, out);
}

std::string StringCodecChain::Describe() const {
  std::string text = "vlen-utf8";
  for (const auto &codec : bytes_to_bytes_) text += StrCat(" -> ", codec->name());
  return text;
}

}  // namespace biodali::codecs
