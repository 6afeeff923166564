#include "codecs/zlib_codec.h"

#include <zlib.h>

#include <limits>

#include "common/error.h"

namespace biodali::codecs {
namespace {

// inflateInit2 window bits: +16 selects the gzip wrapper, plain MAX_WBITS the zlib wrapper.
constexpr int kGzipWindowBits = 16 + MAX_WBITS;
constexpr int kZlibWindowBits = MAX_WBITS;

// z_stream counts in uInt; chunks beyond 4 GiB would need a feeding loop, which no zarr
// chunk we read comes near, so they are rejected rather than silently mis-decoded.
void CheckFitsUInt(size_t nbytes, const char *name) {
  if (nbytes > std::numeric_limits<uInt>::max()) {
    throw Error(StrCat(name, ": buffers over 4 GiB are not supported"));
  }
}

class Inflater {
 public:
  Inflater(int window_bits, const char *name, ConstBytes src) : name_(name) {
    CheckFitsUInt(src.size(), name_);
    if (inflateInit2(&zs_, window_bits) != Z_OK) {
      throw Error(StrCat(name_, ": cannot initialise zlib"));
    }
    zs_.next_in = reinterpret_cast<Bytef *>(const_cast<std::byte *>(src.data()));
    zs_.avail_in = static_cast<uInt>(src.size());
  }
  ~Inflater() { inflateEnd(&zs_); }
  Inflater(const Inflater &) = delete;
  Inflater &operator=(const Inflater &) = delete;

  // Inflates into dst[*out_nbytes, dst.size()) and advances *out_nbytes. `dst` may be a
  // reallocated buffer between calls (zlib keeps its own window). Returns the zlib code.
  int Run(Bytes dst, size_t *out_nbytes) {
    CheckFitsUInt(dst.size(), name_);
    zs_.next_out = reinterpret_cast<Bytef *>(dst.data() + *out_nbytes);
    zs_.avail_out = static_cast<uInt>(dst.size() - *out_nbytes);
    int ret = inflate(&zs_, Z_FINISH);
    *out_nbytes = dst.size() - zs_.avail_out;
    return ret;
  }

  [[noreturn]] void Fail(int ret) const {
    if ((ret == Z_BUF_ERROR || ret == Z_OK) && zs_.avail_in == 0) {
      throw Error(StrCat(name_,
                         ": truncated or corrupt stream (input ended before the stream did)"));
    }
    throw Error(StrCat(name_, ": corrupt compressed data (", zs_.msg ? zs_.msg : "zlib error",
                       ")"));
  }

  bool output_full() const { return zs_.avail_out == 0; }

 private:
  z_stream zs_{};
  const char *name_;
};

void InflateInto(int window_bits, const char *name, ConstBytes src, Bytes dst) {
  // A z_stream and its 32 KB window cost little next to inflating a chunk, and zlib allocates
  // the window itself, so the state lives on the stack rather than in a per-thread cache.
  Inflater inflater(window_bits, name, src);
  size_t out_nbytes = 0;
  int ret = inflater.Run(dst, &out_nbytes);
  if (ret == Z_STREAM_END) {
    if (out_nbytes != dst.size()) {
      throw Error(StrCat(name, ": stream decodes to ", out_nbytes, " bytes, expected ",
                         dst.size()));
    }
    return;
  }
  if (inflater.output_full() && (ret == Z_OK || ret == Z_BUF_ERROR)) {
    throw Error(StrCat(name, ": data decodes to more than the expected ", dst.size(), " bytes"));
  }
  inflater.Fail(ret);
}

ConstBytes Inflate(int window_bits, const char *name, ConstBytes src, ScratchBuffer *scratch) {
  Inflater inflater(window_bits, name, src);
  size_t out_nbytes = 0;
  // Start from a typical compression ratio and grow; the scratch keeps its capacity, so
  // later chunks of similar size decode without reallocating.
  size_t want = src.size() * 4 + 1024;
  for (;;) {
    Bytes out = scratch->Grow(want, out_nbytes);
    int ret = inflater.Run(out, &out_nbytes);
    if (ret == Z_STREAM_END) return {scratch->data(), out_nbytes};
    if (!inflater.output_full() || (ret != Z_OK && ret != Z_BUF_ERROR)) inflater.Fail(ret);
    want = out.size() * 2;
  }
}

}  // namespace

void GzipCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  InflateInto(kGzipWindowBits, name(), src, dst);
}

ConstBytes GzipCodec::Decode(ConstBytes src, ScratchBuffer *scratch) const {
  return Inflate(kGzipWindowBits, name(), src, scratch);
}

void ZlibCodec::DecodeInto(ConstBytes src, Bytes dst) const {
  InflateInto(kZlibWindowBits, name(), src, dst);
}

ConstBytes ZlibCodec::Decode(ConstBytes src, ScratchBuffer *scratch) const {
  return Inflate(kZlibWindowBits, name(), src, scratch);
}

}  // namespace biodali::codecs
