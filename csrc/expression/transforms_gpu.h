// CUDA implementations of the expression transforms: one launch per batch (a block per row),
// on the caller's stream, never synchronizing. Their CPU twins (transforms.h) are the reference:
// integer outputs and the random draws match them bit for bit; normalize within float rounding.
//
// Rows are described by device arrays of per-row device pointers. Data errors (negative values,
// non-integer counts, out-of-range columns) cannot be thrown from a kernel: they are OR-ed into
// `*error_flags` (device memory) as ErrorFlag bits, which the caller reads back asynchronously.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "expression/transforms.h"

namespace biodali::expression::gpu {

enum ErrorFlag : int {
  kNegativeValue = 1,    // negative or NaN value where counts/expression are expected
  kNonIntegerCount = 2,  // downsample on a non-integer value
  kColumnOutOfRange = 4, // column index < 0 or >= n_features
};

struct Rows {
  DType value_dtype;
  const void *const *values;       // [num_rows] device pointers
  const int32_t *const *indices;   // [num_rows] device pointers, or null if not needed
  const int64_t *offsets;          // [num_rows + 1] prefix sums of row lengths (device)
  int num_rows;
  int64_t total_nnz;
};

// Device memory valid until the caller's stream passes this launch (stream-ordered scratch).
class Scratch {
 public:
  virtual void *Allocate(size_t nbytes) = 0;

 protected:
  ~Scratch() = default;
};

void Normalize(const Rows &rows, const NormalizeOptions &options, float *const *out,
               int *error_flags, cudaStream_t stream);

// select_genes with the selection made on the host: row r's k-th output is
// values[source_element[o + k]] at column positions[o + k], o = out_offsets[r].
void GatherSelected(const Rows &rows, const int32_t *source_element, const int32_t *positions,
                    const int64_t *out_offsets, void *const *out_values, int32_t *const *out_indices,
                    cudaStream_t stream);

// `gene_table` (device, table_size entries: column -> position or -1) when selecting genes;
// `normalize` (or null) to normalize first, as NormalizeDensifyRow.
void Densify(const Rows &rows, int64_t n_features, const int32_t *gene_table, int64_t table_size,
             int64_t out_length, DenseType type, const NormalizeOptions *normalize, void *const *out,
             int *error_flags, cudaStream_t stream);

// fraction / target_total: per-row device arrays (as DownsampleRow's arguments).
void Downsample(const Rows &rows, const float *fraction, const float *target_total,
                int64_t seed, uint64_t batch_counter, uint32_t random_stream, void *const *out,
                int *error_flags, cudaStream_t stream);

// Keyed by column when rows.indices is set, else by position (as MaskRow).
void Mask(const Rows &rows, const float *probability, int64_t seed, uint64_t batch_counter,
          uint32_t random_stream, void *const *out, cudaStream_t stream);

void RankTokens(const Rows &rows, const float *medians, int64_t n_medians,
                const RankTokensOptions &options, int32_t *const *tokens, int32_t *const *lengths,
                int *error_flags, Scratch &scratch, cudaStream_t stream);

void BinValues(const Rows &rows, int n_bins, int32_t *const *out, int *error_flags,
               Scratch &scratch, cudaStream_t stream);

}  // namespace biodali::expression::gpu
