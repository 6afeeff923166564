// CUDA half of the kernel C API (kernels_api.h): the expression kernels on raw device pointers.
// Each function is one call of the matching gpu:: function (csrc/expression/transforms_gpu.h)
// with the same arguments; it launches on `stream` and returns without synchronizing. Pointer
// tables (`values`, `indices`, `out`: one device pointer per row) live in device memory.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "capi/kernels_api.h"
#include "expression/transforms_gpu.h"

namespace {

using namespace biodali;
using namespace biodali::kapi;
namespace gpu = biodali::expression::gpu;

void CheckCuda(cudaError_t status, const char *what) {
  if (status != cudaSuccess) throw Error(StrCat(what, ": ", cudaGetErrorString(status)));
}

// Stream-ordered scratch (cudaMallocAsync), freed on the same stream when it goes out of scope:
// the memory stays valid for the work launched before the free.
class StreamScratch final : public gpu::Scratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  ~StreamScratch() {
    for (void *p : blocks_) cudaFreeAsync(p, stream_);
  }
  void *Allocate(size_t nbytes) override {
    void *p = nullptr;
    CheckCuda(cudaMallocAsync(&p, nbytes, stream_), "scratch");
    blocks_.push_back(p);
    return p;
  }

 private:
  cudaStream_t stream_;
  std::vector<void *> blocks_;
};

gpu::Rows RowsOf(const char *dtype, const void *const *values, const int32_t *const *indices,
                 const int64_t *offsets, int num_rows, int64_t total_nnz) {
  if (num_rows < 0) throw Error(StrCat("num_rows must be >= 0, got ", num_rows));
  return gpu::Rows{ValueType(dtype), values, indices, offsets, num_rows, total_nnz};
}

cudaStream_t StreamOf(void *stream) { return static_cast<cudaStream_t>(stream); }

}  // namespace

// Number of CUDA devices the runtime sees (0 without a driver or device; never fails).
BIODALI_KAPI int biodali_kgpu_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

BIODALI_KAPI int biodali_kgpu_synchronize(void *stream, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] { CheckCuda(cudaStreamSynchronize(StreamOf(stream)), "synchronize"); });
}

BIODALI_KAPI int biodali_kgpu_normalize(const char *dtype, const void *const *values, const int64_t *offsets,
                                        int num_rows, int64_t total_nnz, double target_sum, int log1p,
                                        float *const *out, int *error_flags, void *stream, char *err,
                                        size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    gpu::Normalize(RowsOf(dtype, values, nullptr, offsets, num_rows, total_nnz),
                   expression::NormalizeOptions{target_sum, log1p != 0}, out, error_flags, StreamOf(stream));
  });
}

// Row r's k-th output is values[r][source_element[o + k]] at position positions[o + k],
// o = out_offsets[r] (device arrays; the selection itself is made on the host:
// biodali_kcpu_select_genes).
BIODALI_KAPI int biodali_kgpu_gather_selected(const char *dtype, const void *const *values,
                                              const int64_t *offsets, int num_rows, int64_t total_nnz,
                                              const int32_t *source_element, const int32_t *positions,
                                              const int64_t *out_offsets, void *const *out_values,
                                              int32_t *const *out_indices, void *stream, char *err,
                                              size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    gpu::GatherSelected(RowsOf(dtype, values, nullptr, offsets, num_rows, total_nnz), source_element, positions,
                        out_offsets, out_values, out_indices, StreamOf(stream));
  });
}

// gene_table: device column -> position table (biodali_kcpu_gene_table) or null; normalize != 0
// for normalize_densify.
BIODALI_KAPI int biodali_kgpu_densify(const char *dtype, const void *const *values, const int32_t *const *indices,
                                      const int64_t *offsets, int num_rows, int64_t total_nnz, int64_t n_features,
                                      const int32_t *gene_table, int64_t table_size, int64_t out_length,
                                      const char *dense_type, int normalize, double target_sum, int log1p,
                                      void *const *out, int *error_flags, void *stream, char *err,
                                      size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    expression::NormalizeOptions options{target_sum, log1p != 0};
    gpu::Densify(RowsOf(dtype, values, indices, offsets, num_rows, total_nnz), n_features, gene_table,
                 table_size, out_length, DenseTypeOf(dense_type), normalize ? &options : nullptr, out,
                 error_flags, StreamOf(stream));
  });
}

// fraction / target_total: per-row device float arrays.
BIODALI_KAPI int biodali_kgpu_downsample(const char *dtype, const void *const *values, const int64_t *offsets,
                                         int num_rows, int64_t total_nnz, const float *fraction,
                                         const float *target_total, int64_t seed, uint64_t batch_counter,
                                         uint32_t random_stream, void *const *out, int *error_flags, void *stream,
                                         char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    gpu::Downsample(RowsOf(dtype, values, nullptr, offsets, num_rows, total_nnz), fraction, target_total, seed,
                    batch_counter, random_stream, out, error_flags, StreamOf(stream));
  });
}

// indices == null: draws keyed by position.
BIODALI_KAPI int biodali_kgpu_mask(const char *dtype, const void *const *values, const int32_t *const *indices,
                                   const int64_t *offsets, int num_rows, int64_t total_nnz,
                                   const float *probability, int64_t seed, uint64_t batch_counter,
                                   uint32_t random_stream, void *const *out, void *stream, char *err,
                                   size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    gpu::Mask(RowsOf(dtype, values, indices, offsets, num_rows, total_nnz), probability, seed, batch_counter,
              random_stream, out, StreamOf(stream));
  });
}

// tokens: per-row pointers to max_length int32; lengths: per-row pointers to one int32.
BIODALI_KAPI int biodali_kgpu_rank_tokens(const char *dtype, const void *const *values,
                                          const int32_t *const *indices, const int64_t *offsets, int num_rows,
                                          int64_t total_nnz, const float *medians, int64_t n_medians,
                                          int64_t max_length, int32_t pad_id, int32_t token_offset,
                                          int32_t *const *tokens, int32_t *const *lengths, int *error_flags,
                                          void *stream, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    if (max_length <= 0) throw Error("max_length must be > 0");
    StreamScratch scratch(StreamOf(stream));
    gpu::RankTokens(RowsOf(dtype, values, indices, offsets, num_rows, total_nnz), medians, n_medians,
                    expression::RankTokensOptions{max_length, pad_id, token_offset}, tokens, lengths,
                    error_flags, scratch, StreamOf(stream));
  });
}

BIODALI_KAPI int biodali_kgpu_bin_values(const char *dtype, const void *const *values, const int64_t *offsets,
                                         int num_rows, int64_t total_nnz, int n_bins, int32_t *const *out,
                                         int *error_flags, void *stream, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    if (n_bins < 2 || n_bins > 4097) throw Error(StrCat("n_bins must be in [2, 4097], got ", n_bins));
    StreamScratch scratch(StreamOf(stream));
    gpu::BinValues(RowsOf(dtype, values, nullptr, offsets, num_rows, total_nnz), n_bins, out, error_flags,
                   scratch, StreamOf(stream));
  });
}
