// Expression transforms on sparse rows (one cell: `values` + int32 column `indices`).
// These are the CPU twins: the reference the CUDA kernels (transforms_gpu.h) are tested against.
// Every function handles one row, so a caller can spread a batch over its own threads; errors
// are thrown as biodali::Error naming the problem (the caller adds which sample).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "common/dtype.h"
#include "expression/device_math.h"

namespace biodali::expression {

// Types the transforms accept as `values`: numeric dtypes except float16/bool (the reader's
// `dtype=` casts those).
bool IsSupportedValueType(DType dtype);

struct NormalizeOptions {
  double target_sum = 1e4;
  bool log1p = true;
};

// out[j] = log1p(values[j] / sum(values) * target_sum) in float32 (without log1p if disabled);
// an all-zero row gives zeros. Sums and scaling are done in double.
template <typename T>
void NormalizeRow(const T *values, int64_t nnz, const NormalizeOptions &options, float *out);

// A gene subset: column id -> position in the subset, from a list of column ids.
class GeneSelection {
 public:
  explicit GeneSelection(const std::vector<int64_t> &genes);  // non-empty, >= 0, no repeats
  int32_t PositionOf(int64_t column) const {
    return column >= 0 && column < static_cast<int64_t>(table_.size()) ? table_[column] : -1;
  }
  int64_t size() const { return num_selected_; }
  const std::vector<int32_t> &table() const { return table_; }  // -1 = not selected

 private:
  std::vector<int32_t> table_;
  int64_t num_selected_ = 0;
};

// The entries of one row that are in `genes`, as (position in the subset, element of the row),
// ordered by position: the output is a canonical CSR row of the subset matrix. Throws on a
// negative column id or a column that appears twice in the row.
void SelectRow(const int32_t *indices, int64_t nnz, const GeneSelection &genes,
               std::vector<std::pair<int32_t, int32_t>> *kept, std::vector<int32_t> *slots);

enum class DenseType : uint8_t { kFloat32, kFloat16, kBFloat16 };
size_t DenseTypeSize(DenseType type);

struct DensifyOptions {
  int64_t n_features = 0;                // output length without `genes`; column bound if > 0
  DenseType type = DenseType::kFloat32;
  const GeneSelection *genes = nullptr;  // when set: output length genes->size()
};

// Dense row (zeros, then each value at its column; repeated columns are summed, as scipy does).
template <typename T>
void DensifyRow(const T *values, const int32_t *indices, int64_t nnz, const DensifyOptions &options,
                void *out);

// normalize -> (select genes) -> densify in one pass over the row: the row total needs every
// value, but log1p is only computed for the entries that reach the output.
template <typename T>
void NormalizeDensifyRow(const T *values, const int32_t *indices, int64_t nnz,
                         const NormalizeOptions &normalize, const DensifyOptions &densify, void *out);

// Binomial thinning of integer counts: each of the row's counts is kept with probability p.
// Throws on negative or non-integer values.
template <typename T>
void DownsampleRow(const T *values, int64_t nnz, double fraction, double target_total,
                   const RowRandom &random, T *out);

// Random gene dropout: each value is set to 0 with probability `probability`. Draws are keyed
// by column when `indices` is given (so two arrays of one cell share the mask), else by position.
template <typename T>
void MaskRow(const T *values, const int32_t *indices, int64_t nnz, double probability,
             const RowRandom &random, T *out);

struct RankTokensOptions {
  int64_t max_length = 2048;
  int32_t pad_id = 0;
  int32_t token_offset = 0;  // added to every column id (e.g. to skip special tokens)
};

// Geneformer's rank-value encoding: non-zero genes with a positive median ordered by
// value / median descending (ties by column), the first max_length column ids (+ offset), then
// pad_id. Returns the number of real tokens.
template <typename T>
int64_t RankTokensRow(const T *values, const int32_t *indices, int64_t nnz, const float *medians,
                      int64_t n_medians, const RankTokensOptions &options, int32_t *tokens,
                      std::vector<std::pair<double, int32_t>> *scratch);

// scGPT's value binning: non-zero values -> numpy.digitize(v, numpy.quantile(nonzero,
// linspace(0, 1, n_bins - 1))), so bins 1..n_bins-1; zeros stay 0. Throws on negative values.
template <typename T>
void BinValuesRow(const T *values, int64_t nnz, int n_bins, int32_t *out,
                  std::vector<double> *scratch);

}  // namespace biodali::expression
