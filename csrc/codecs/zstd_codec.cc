#include "codecs/zstd_codec.h"

#include <zstd.h>
#include <zstd_errors.h>

#include <memory>

#include "common/error.h"

namespace biodali::codecs {
namespace {

struct DCtxDeleter {
  void operator()(ZSTD_DCtx *ctx) const { ZSTD_freeDCtx(ctx); }
};

// A decompression context holds ~100 KB of tables; one per thread, created on first use and
// reused for every chunk that thread decodes.
ZSTD_DCtx *ThreadDCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> ctx(ZSTD_createDCtx());
  if (!ctx) throw Error("zstd: cannot allocate a decompression context");
  return ctx.get();
}

struct DStreamDeleter {
  void operator()(ZSTD_DStream *s) const { ZSTD_freeDStream(s); }
};

ZSTD_DStream *ThreadDStream() {
  thread_local std::unique_ptr<ZSTD_DStream, DStreamDeleter> stream(ZSTD_createDStream());
  if (!stream) throw Error("zstd: cannot allocate a decompression stream");
  return stream.get();
}

[[noreturn]] void FailZstd(size_t code) {
  throw Error(StrCat("zstd: corrupt compressed data (", ZSTD_getErrorName(code), ")"));
}

}  // namespace

void ZstdCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  unsigned long long content_nbytes = ZSTD_getFrameContentSize(src.data(), src.size());
  if (content_nbytes == ZSTD_CONTENTSIZE_ERROR) {
    throw Error(StrCat("zstd: corrupt or truncated frame header (", src.size(), " bytes)"));
  }
  // Frames written by numcodecs record their size: reject a mismatch before decoding.
  if (content_nbytes != ZSTD_CONTENTSIZE_UNKNOWN && content_nbytes != dst.size()) {
    throw Error(StrCat("zstd: frame decodes to ", content_nbytes, " bytes, expected ",
                       dst.size()));
  }
  // Walks the block headers only (no decoding), so a cut-off frame is reported as such
  // rather than as the decoder's generic "Src size is incorrect".
  size_t frame_nbytes = ZSTD_findFrameCompressedSize(src.data(), src.size());
  if (ZSTD_isError(frame_nbytes)) {
    throw Error(StrCat("zstd: truncated or corrupt frame (", ZSTD_getErrorName(frame_nbytes),
                       ", ", src.size(), " bytes)"));
  }
  size_t n = ZSTD_decompressDCtx(ThreadDCtx(), dst.data(), dst.size(), src.data(), src.size());
  if (ZSTD_isError(n)) {
    if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) {
      throw Error(StrCat("zstd: data decodes to more than the expected ", dst.size(), " bytes"));
    }
    FailZstd(n);
  }
  if (n != dst.size()) {
    throw Error(StrCat("zstd: frame decodes to ", n, " bytes, expected ", dst.size()));
  }
}

ConstBytes ZstdCodec::Decode(ConstBytes src, ScratchBuffer *scratch) const {
  unsigned long long content_nbytes = ZSTD_getFrameContentSize(src.data(), src.size());
  if (content_nbytes == ZSTD_CONTENTSIZE_ERROR) {
    throw Error(StrCat("zstd: corrupt or truncated frame header (", src.size(), " bytes)"));
  }
  if (content_nbytes != ZSTD_CONTENTSIZE_UNKNOWN) {
    Bytes out = scratch->Get(content_nbytes);
    DecodeInto(src, out);
    return out;
  }
  // Size not recorded (streamed frames): decode incrementally, growing the buffer.
  ZSTD_DStream *stream = ThreadDStream();
  ZSTD_initDStream(stream);
  ZSTD_inBuffer in{src.data(), src.size(), 0};
  size_t out_nbytes = 0;
  for (;;) {
    Bytes out = scratch->Grow(out_nbytes + ZSTD_DStreamOutSize(), out_nbytes);
    ZSTD_outBuffer ob{out.data(), out.size(), out_nbytes};
    size_t ret = ZSTD_decompressStream(stream, &ob, &in);
    if (ZSTD_isError(ret)) FailZstd(ret);
    out_nbytes = ob.pos;
    if (ret == 0 && in.pos == in.size) break;
    if (in.pos == in.size && ob.pos < ob.size) {
      throw Error("zstd: truncated frame (input ended before the frame did)");
    }
  }
  return {scratch->data(), out_nbytes};
}

}  // namespace biodali::codecs
