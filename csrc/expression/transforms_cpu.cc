// CPU twins of the expression transforms (see transforms.h).
#include "expression/transforms.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/error.h"
#include "expression/value_types.h"

// glibc's libmvec provides vector variants of log (_ZGV*_log); declaring it `simd` lets the
// compiler call them from vectorized loops (glibc declares them only under -ffast-math).
#pragma omp declare simd notinbranch
extern "C" double log(double);

namespace biodali::expression {
namespace {

template <typename T>
[[noreturn]] void FailValue(const char *what, T v, int64_t element) {
  if constexpr (std::is_floating_point_v<T>)
    throw Error(StrCat(what, " (value ", static_cast<double>(v), " at element ", element, ")"));
  else
    throw Error(StrCat(what, " (value ", static_cast<int64_t>(v), " at element ", element, ")"));
}

// log1p of n scaled values into float32, four at a time with glibc's vector log (libmvec) on
// AVX2 machines. log(1 + x) is exact enough for a float32 result when x >= 1e-4 (the rounding
// of 1 + x is 2^-53 relative); smaller x are redone with log1p.
__attribute__((target_clones("avx2", "default")))
void Log1pToFloat(const double *x, float *out, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] = static_cast<float>(log(1.0 + x[i]));
  for (int i = 0; i < n; ++i)
    if (x[i] < 1e-4) out[i] = static_cast<float>(log1p(x[i]));
}

// Scaled (and log1p'd) values of elements[0..n) of a row: the value step of normalize.
template <typename T>
void NormalizedValues(const T *values, const int32_t *elements, int n, double scale, bool log1p,
                      float *out) {
  double scaled[256];
  for (int k = 0; k < n; ++k) scaled[k] = static_cast<double>(values[elements ? elements[k] : k]) * scale;
  if (log1p) Log1pToFloat(scaled, out, n);
  else
    for (int k = 0; k < n; ++k) out[k] = static_cast<float>(scaled[k]);
}

// An integer count, or a throw: downsample works on counts only.
template <typename T>
uint64_t CountOf(T v, int64_t element) {
  uint64_t count;
  if (!ToCount(v, &count)) FailValue("downsample needs non-negative integer counts up to 2^24", v, element);
  return count;
}

}  // namespace

bool IsSupportedValueType(DType dtype) {
  return dtype != DType::kFloat16 && dtype != DType::kBool;
}

// target_sum / row total (0 for an all-zero row); throws on a negative or NaN value. Four
// partial sums and a branch-free check keep the loop short (order of additions: j mod 4).
template <typename T>
double RowScale(const T *values, int64_t nnz, double target_sum) {
  double partial[4] = {0, 0, 0, 0};
  bool bad = false;
  int64_t j = 0;
  for (; j + 4 <= nnz; j += 4)
    for (int k = 0; k < 4; ++k) {
      bad |= IsNegativeOrNaN(values[j + k]);
      partial[k] += static_cast<double>(values[j + k]);
    }
  for (; j < nnz; ++j) {
    bad |= IsNegativeOrNaN(values[j]);
    partial[0] += static_cast<double>(values[j]);
  }
  if (bad)
    for (j = 0; j < nnz; ++j)
      if (IsNegativeOrNaN(values[j])) FailValue("normalize needs non-negative values", values[j], j);
  double total = (partial[0] + partial[1]) + (partial[2] + partial[3]);
  return total > 0 ? target_sum / total : 0.0;
}

template <typename T>
void NormalizeRow(const T *values, int64_t nnz, const NormalizeOptions &options, float *out) {
  double scale = RowScale(values, nnz, options.target_sum);
  for (int64_t base = 0; base < nnz; base += 256)
    NormalizedValues(values + base, nullptr, static_cast<int>(std::min<int64_t>(256, nnz - base)), scale,
                     options.log1p, out + base);
}

GeneSelection::GeneSelection(const std::vector<int64_t> &genes) {
  if (genes.empty()) throw Error("the gene list is empty");
  int64_t max_column = -1;
  for (int64_t g : genes) {
    if (g < 0) throw Error(StrCat("gene column ", g, " is negative"));
    if (g > INT32_MAX) throw Error(StrCat("gene column ", g, " does not fit int32 indices"));
    max_column = std::max(max_column, g);
  }
  table_.assign(static_cast<size_t>(max_column + 1), -1);
  for (size_t position = 0; position < genes.size(); ++position) {
    int32_t &slot = table_[genes[position]];
    if (slot >= 0)
      throw Error(StrCat("gene column ", genes[position], " is listed twice (positions ", slot,
                         " and ", position, ")"));
    slot = static_cast<int32_t>(position);
  }
  num_selected_ = static_cast<int64_t>(genes.size());
}

void SelectRow(const int32_t *indices, int64_t nnz, const GeneSelection &genes,
               std::vector<std::pair<int32_t, int32_t>> *kept, std::vector<int32_t> *slots) {
  kept->clear();
  for (int64_t j = 0; j < nnz; ++j) {
    if (indices[j] < 0) throw Error(StrCat("negative column index ", indices[j], " at element ", j));
    int32_t position = genes.PositionOf(indices[j]);
    if (position >= 0) kept->emplace_back(position, static_cast<int32_t>(j));
  }
  // Order by position: a sort when few entries survive, else one sweep over slot table.
  if (static_cast<int64_t>(kept->size()) * 8 < genes.size()) {
    std::sort(kept->begin(), kept->end());
    for (size_t k = 1; k < kept->size(); ++k)
      if ((*kept)[k].first == (*kept)[k - 1].first)
        throw Error(StrCat("column ", indices[(*kept)[k].second], " appears twice in the row"));
    return;
  }
  slots->assign(static_cast<size_t>(genes.size()), -1);
  for (auto [position, element] : *kept) {
    if ((*slots)[position] >= 0)
      throw Error(StrCat("column ", indices[element], " appears twice in the row"));
    (*slots)[position] = element;
  }
  kept->clear();
  for (int32_t position = 0; position < static_cast<int32_t>(slots->size()); ++position)
    if ((*slots)[position] >= 0) kept->emplace_back(position, (*slots)[position]);
}

size_t DenseTypeSize(DenseType type) { return type == DenseType::kFloat32 ? 4 : 2; }

namespace {

template <DenseType kType>
void AddToSlot(void *out, int64_t slot, float v) {
  if constexpr (kType == DenseType::kFloat32) {
    static_cast<float *>(out)[slot] += v;
  } else if constexpr (kType == DenseType::kFloat16) {
    uint16_t &h = static_cast<uint16_t *>(out)[slot];
    h = FloatToHalfBits(HalfBitsToFloat(h) + v);
  } else {
    uint16_t &b = static_cast<uint16_t *>(out)[slot];
    b = FloatToBFloat16Bits(BFloat16BitsToFloat(b) + v);
  }
}

// Zeros, then the values of the selected entries added at their columns. Selected entries are
// first collected branch-free in chunks of 256 (so the unpredictable "is this gene selected"
// test costs no mispredicted branches); values_of(elements, count, out) then computes the
// chunk's values at once (for normalize_densify: a vectorized log over the kept entries only).
template <DenseType kType, typename ValuesOf>
void ScatterRowAs(const int32_t *indices, int64_t nnz, const DensifyOptions &options, ValuesOf values_of,
                  void *out) {
  int64_t length = options.genes ? options.genes->size() : options.n_features;
  memset(out, 0, static_cast<size_t>(length) * DenseTypeSize(kType));
  const int32_t *table = options.genes ? options.genes->table().data() : nullptr;
  int64_t table_size = options.genes ? static_cast<int64_t>(options.genes->table().size()) : 0;
  int64_t bound = options.n_features > 0 ? options.n_features : INT64_MAX;
  constexpr int kChunk = 256;
  int32_t elements[kChunk], slots[kChunk];
  float chunk_values[kChunk];
  for (int64_t base = 0; base < nnz; base += kChunk) {
    int64_t end = std::min<int64_t>(nnz, base + kChunk);
    int count = 0;
    for (int64_t j = base; j < end; ++j) {
      int64_t column = indices[j];
      if (column < 0 || column >= bound)
        throw Error(StrCat("column index ", column, " at element ", j, " is outside [0, ",
                           options.n_features, ")"));
      int32_t slot = table ? (column < table_size ? table[column] : -1) : static_cast<int32_t>(column);
      elements[count] = static_cast<int32_t>(j);
      slots[count] = slot;
      count += slot >= 0;
    }
    values_of(elements, count, chunk_values);
    for (int k = 0; k < count; ++k) AddToSlot<kType>(out, slots[k], chunk_values[k]);
  }
}

template <typename ValuesOf>
void ScatterRow(const int32_t *indices, int64_t nnz, const DensifyOptions &options, ValuesOf values_of,
                void *out) {
  switch (options.type) {
    case DenseType::kFloat32: ScatterRowAs<DenseType::kFloat32>(indices, nnz, options, values_of, out); break;
    case DenseType::kFloat16: ScatterRowAs<DenseType::kFloat16>(indices, nnz, options, values_of, out); break;
    case DenseType::kBFloat16: ScatterRowAs<DenseType::kBFloat16>(indices, nnz, options, values_of, out); break;
  }
}

}  // namespace

template <typename T>
void DensifyRow(const T *values, const int32_t *indices, int64_t nnz, const DensifyOptions &options,
                void *out) {
  ScatterRow(indices, nnz, options, [values](const int32_t *elements, int count, float *chunk) {
    for (int k = 0; k < count; ++k) chunk[k] = static_cast<float>(values[elements[k]]);
  }, out);
}

template <typename T>
void NormalizeDensifyRow(const T *values, const int32_t *indices, int64_t nnz,
                         const NormalizeOptions &normalize, const DensifyOptions &densify, void *out) {
  double scale = RowScale(values, nnz, normalize.target_sum);
  ScatterRow(indices, nnz, densify, [&](const int32_t *elements, int count, float *chunk) {
    NormalizedValues(values, elements, count, scale, normalize.log1p, chunk);
  }, out);
}

template <typename T>
void DownsampleRow(const T *values, int64_t nnz, double fraction, double target_total,
                   const RowRandom &random, T *out) {
  uint64_t total = 0;
  for (int64_t j = 0; j < nnz; ++j) total += CountOf(values[j], j);
  uint64_t threshold = ProbabilityThreshold(ThinningProbability(total, fraction, target_total));
  for (int64_t j = 0; j < nnz; ++j) {
    uint64_t count = static_cast<uint64_t>(values[j]);
    out[j] = static_cast<T>(random.CountSuccesses(static_cast<uint32_t>(j), count, threshold));
  }
}

template <typename T>
void MaskRow(const T *values, const int32_t *indices, int64_t nnz, double probability,
             const RowRandom &random, T *out) {
  uint64_t threshold = ProbabilityThreshold(probability);
  for (int64_t j = 0; j < nnz; ++j) {
    uint32_t key = indices ? static_cast<uint32_t>(indices[j]) : static_cast<uint32_t>(j);
    out[j] = random.Draw(key, 0) < threshold ? T(0) : values[j];
  }
}

template <typename T>
int64_t RankTokensRow(const T *values, const int32_t *indices, int64_t nnz, const float *medians,
                      int64_t n_medians, const RankTokensOptions &options, int32_t *tokens,
                      std::vector<std::pair<double, int32_t>> *scratch) {
  scratch->clear();
  for (int64_t j = 0; j < nnz; ++j) {
    if (IsNegativeOrNaN(values[j])) FailValue("rank_tokens needs non-negative values", values[j], j);
    int32_t column = indices[j];
    if (column < 0) throw Error(StrCat("negative column index ", column, " at element ", j));
    if (values[j] == T(0) || column >= n_medians || !(medians[column] > 0)) continue;
    // Dividing by the cell's total as well would not change the order; it is left out so no
    // extra rounding can merge two values.
    scratch->emplace_back(static_cast<double>(values[j]) / static_cast<double>(medians[column]),
                          column);
  }
  auto higher_first = [](const std::pair<double, int32_t> &a, const std::pair<double, int32_t> &b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int64_t length = std::min<int64_t>(static_cast<int64_t>(scratch->size()), options.max_length);
  std::partial_sort(scratch->begin(), scratch->begin() + length, scratch->end(), higher_first);
  for (int64_t k = 0; k < length; ++k) tokens[k] = (*scratch)[k].second + options.token_offset;
  for (int64_t k = length; k < options.max_length; ++k) tokens[k] = options.pad_id;
  return length;
}

template <typename T>
void BinValuesRow(const T *values, int64_t nnz, int n_bins, int32_t *out,
                  std::vector<double> *scratch) {
  scratch->clear();
  for (int64_t j = 0; j < nnz; ++j) {
    if (IsNegativeOrNaN(values[j])) FailValue("bin_values needs non-negative values", values[j], j);
    if (values[j] != T(0)) scratch->push_back(static_cast<double>(values[j]));
  }
  int64_t n = static_cast<int64_t>(scratch->size());
  std::sort(scratch->begin(), scratch->end());
  int num_edges = n_bins - 1;
  std::vector<double> edges(num_edges);
  if (n > 0)
    for (int k = 0; k < num_edges; ++k)
      edges[k] = LinearQuantile(scratch->data(), n, LinspaceUnit(k, num_edges));
  for (int64_t j = 0; j < nnz; ++j) {
    if (values[j] == T(0)) {
      out[j] = 0;
      continue;
    }
    double v = static_cast<double>(values[j]);
    out[j] = static_cast<int32_t>(std::upper_bound(edges.begin(), edges.end(), v) - edges.begin());
  }
}

#define BIODALI_INSTANTIATE(T)                                                                   \
  template void NormalizeRow<T>(const T *, int64_t, const NormalizeOptions &, float *);          \
  template void DensifyRow<T>(const T *, const int32_t *, int64_t, const DensifyOptions &,       \
                              void *);                                                           \
  template void NormalizeDensifyRow<T>(const T *, const int32_t *, int64_t,                      \
                                       const NormalizeOptions &, const DensifyOptions &, void *); \
  template void DownsampleRow<T>(const T *, int64_t, double, double, const RowRandom &, T *);    \
  template void MaskRow<T>(const T *, const int32_t *, int64_t, double, const RowRandom &, T *); \
  template int64_t RankTokensRow<T>(const T *, const int32_t *, int64_t, const float *, int64_t, \
                                    const RankTokensOptions &, int32_t *,                        \
                                    std::vector<std::pair<double, int32_t>> *);                  \
  template void BinValuesRow<T>(const T *, int64_t, int, int32_t *, std::vector<double> *);
BIODALI_FOR_EACH_VALUE_TYPE(BIODALI_INSTANTIATE)
#undef BIODALI_INSTANTIATE

}  // namespace biodali::expression
