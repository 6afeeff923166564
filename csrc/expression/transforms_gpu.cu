// CUDA kernels of the expression transforms (see transforms_gpu.h): a block per row, the same
// per-element arithmetic as the CPU twins (device_math.h).
#include "expression/transforms_gpu.h"

#include <cub/cub.cuh>

#include <type_traits>

#include "expression/value_types.h"

namespace biodali::expression::gpu {
namespace {

constexpr int kBlock = 256;

// The integer count a value holds; flags what downsample cannot thin (and returns 0).
template <typename T>
__device__ uint64_t CountOf(T v, bool *bad) {
  uint64_t count = 0;
  if (!ToCount(v, &count)) *bad = true;
  return count;
}

struct RowSpan {
  int64_t offset, length;
};

__device__ RowSpan RowOf(const Rows &rows, int r) {
  return {rows.offsets[r], rows.offsets[r + 1] - rows.offsets[r]};
}

// target_sum / row total for the whole block (0 for an all-zero row); flags negative values.
template <typename T>
__device__ double BlockRowScale(const T *values, int64_t length, double target_sum, int *error_flags) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ double scale;
  double partial = 0;
  bool bad = false;
  for (int64_t j = threadIdx.x; j < length; j += blockDim.x) {
    bad |= IsNegativeOrNaN(values[j]);
    partial += static_cast<double>(values[j]);
  }
  if (bad) atomicOr(error_flags, kNegativeValue);
  double total = Reduce(reduce_storage).Sum(partial);
  if (threadIdx.x == 0) scale = total > 0 ? target_sum / total : 0.0;
  __syncthreads();
  return scale;
}

template <typename T>
__global__ void NormalizeKernel(Rows rows, double target_sum, bool log1p, float *const *out,
                                int *error_flags) {
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  double scale = BlockRowScale(values, row.length, target_sum, error_flags);
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    double scaled = static_cast<double>(values[j]) * scale;
    out[r][j] = static_cast<float>(log1p ? ::log1p(scaled) : scaled);
  }
}

template <typename T>
__global__ void GatherKernel(Rows rows, const int32_t *source_element, const int32_t *positions,
                             const int64_t *out_offsets, void *const *out_values,
                             int32_t *const *out_indices) {
  int r = blockIdx.x;
  const T *values = static_cast<const T *>(rows.values[r]);
  T *out = static_cast<T *>(out_values[r]);
  int64_t begin = out_offsets[r], length = out_offsets[r + 1] - begin;
  for (int64_t k = threadIdx.x; k < length; k += blockDim.x) {
    out[k] = values[source_element[begin + k]];
    out_indices[r][k] = positions[begin + k];
  }
}

// Adds to a float16/bfloat16 slot exactly as the CPU twin does: round(float(old) + x).
template <DenseType kType>
__device__ void AddToHalfSlot(uint16_t *slot, float x) {
  auto *address = reinterpret_cast<unsigned short *>(slot);
  unsigned short old = *address, assumed;
  do {
    assumed = old;
    float sum = (kType == DenseType::kBFloat16 ? BFloat16BitsToFloat(assumed) : HalfBitsToFloat(assumed)) + x;
    unsigned short updated = kType == DenseType::kBFloat16 ? FloatToBFloat16Bits(sum) : FloatToHalfBits(sum);
    old = atomicCAS(address, assumed, updated);
  } while (old != assumed);
}

// With kNormalize, values are first scaled to target_sum (and log1p'd), as NormalizeDensifyRow.
template <typename T, DenseType kType, bool kNormalize>
__global__ void DensifyKernel(Rows rows, int64_t n_features, const int32_t *gene_table,
                              int64_t table_size, int64_t out_length, NormalizeOptions normalize,
                              void *const *out, int *error_flags) {
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  const int32_t *indices = rows.indices[r];
  double scale = 0;
  if constexpr (kNormalize) scale = BlockRowScale(values, row.length, normalize.target_sum, error_flags);
  using Slot = std::conditional_t<kType == DenseType::kFloat32, float, uint16_t>;
  Slot *dense = static_cast<Slot *>(out[r]);
  for (int64_t k = threadIdx.x; k < out_length; k += blockDim.x) dense[k] = Slot(0);
  __syncthreads();
  bool bad = false;
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    int64_t column = indices[j];
    if (column < 0 || (n_features > 0 && column >= n_features)) {
      bad = true;
      continue;
    }
    int64_t slot = gene_table ? (column < table_size ? gene_table[column] : -1) : column;
    if (slot < 0) continue;
    float x;
    if constexpr (kNormalize) {
      double scaled = static_cast<double>(values[j]) * scale;
      x = static_cast<float>(normalize.log1p ? log1p(scaled) : scaled);
    } else {
      x = static_cast<float>(values[j]);
    }
    if constexpr (kType == DenseType::kFloat32) atomicAdd(&dense[slot], x);
    else AddToHalfSlot<kType>(&dense[slot], x);
  }
  if (bad) atomicOr(error_flags, kColumnOutOfRange);
}

template <typename T>
__global__ void DownsampleKernel(Rows rows, const float *fraction, const float *target_total,
                                 int64_t seed, uint64_t batch_counter, uint32_t random_stream,
                                 void *const *out, int *error_flags) {
  using Reduce = cub::BlockReduce<unsigned long long, kBlock>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ unsigned long long total;
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  unsigned long long partial = 0;
  bool bad = false;
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) partial += CountOf(values[j], &bad);
  if (bad) atomicOr(error_flags, kNonIntegerCount);
  unsigned long long sum = Reduce(reduce_storage).Sum(partial);
  if (threadIdx.x == 0) total = sum;
  __syncthreads();
  uint64_t threshold = ProbabilityThreshold(ThinningProbability(total, fraction[r], target_total[r]));
  RowRandom random = RowRandom::For(seed, batch_counter, static_cast<uint32_t>(r), random_stream);
  T *thinned = static_cast<T *>(out[r]);
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    bool ignored = false;
    uint64_t count = CountOf(values[j], &ignored);
    thinned[j] = static_cast<T>(random.CountSuccesses(static_cast<uint32_t>(j), count, threshold));
  }
}

template <typename T>
__global__ void MaskKernel(Rows rows, const float *probability, int64_t seed,
                           uint64_t batch_counter, uint32_t random_stream, void *const *out) {
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  const int32_t *indices = rows.indices ? rows.indices[r] : nullptr;
  uint64_t threshold = ProbabilityThreshold(probability[r]);
  RowRandom random = RowRandom::For(seed, batch_counter, static_cast<uint32_t>(r), random_stream);
  T *masked = static_cast<T *>(out[r]);
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    uint32_t key = indices ? static_cast<uint32_t>(indices[j]) : static_cast<uint32_t>(j);
    masked[j] = random.Draw(key, 0) < threshold ? T(0) : values[j];
  }
}

// Sort keys for rank_tokens: ascending order of the key = descending value / median; entries
// left out get the largest key. Also counts each row's real tokens.
template <typename T>
__global__ void RankKeysKernel(Rows rows, const float *medians, int64_t n_medians,
                               int64_t max_length, uint64_t *keys, int32_t *columns,
                               int32_t *const *lengths, int *error_flags) {
  using Reduce = cub::BlockReduce<int, kBlock>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  const int32_t *indices = rows.indices[r];
  int valid_count = 0, flags = 0;
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    T v = values[j];
    int32_t column = indices[j];
    if (IsNegativeOrNaN(v)) flags |= kNegativeValue;
    if (column < 0) flags |= kColumnOutOfRange;
    bool valid = v != T(0) && column >= 0 && column < n_medians && medians[column] > 0;
    uint64_t key = ~uint64_t{0};
    if (valid) {
      double ratio = static_cast<double>(v) / static_cast<double>(medians[column]);
      key = ~static_cast<uint64_t>(__double_as_longlong(ratio));
      ++valid_count;
    }
    keys[row.offset + j] = key;
    columns[row.offset + j] = column;
  }
  if (flags) atomicOr(error_flags, flags);
  int count = Reduce(reduce_storage).Sum(valid_count);
  if (threadIdx.x == 0) *lengths[r] = static_cast<int32_t>(count < max_length ? count : max_length);
}

__global__ void WriteTokensKernel(const int64_t *offsets, const int32_t *sorted_columns,
                                  RankTokensOptions options, int32_t *const *tokens,
                                  int32_t *const *lengths) {
  int r = blockIdx.x;
  int64_t length = *lengths[r];
  const int32_t *row = sorted_columns + offsets[r];
  for (int64_t k = threadIdx.x; k < options.max_length; k += blockDim.x)
    tokens[r][k] = k < length ? row[k] + options.token_offset : options.pad_id;
}

template <typename T>
__global__ void GatherAsDoubleKernel(Rows rows, double *out, int *error_flags) {
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const T *values = static_cast<const T *>(rows.values[r]);
  bool bad = false;
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    bad |= IsNegativeOrNaN(values[j]);
    out[row.offset + j] = static_cast<double>(values[j]);
  }
  if (bad) atomicOr(error_flags, kNegativeValue);
}

// Bin edges from each row's sorted values (zeros first), then numpy.digitize of every value.
template <typename T>
__global__ void DigitizeKernel(Rows rows, const double *sorted, int num_edges, int32_t *const *out) {
  extern __shared__ double edges[];
  __shared__ int64_t num_zeros;
  int r = blockIdx.x;
  RowSpan row = RowOf(rows, r);
  const double *row_sorted = sorted + row.offset;
  if (threadIdx.x == 0) {
    int64_t lo = 0, hi = row.length;  // first non-zero: values are >= 0
    while (lo < hi) {
      int64_t mid = (lo + hi) / 2;
      if (row_sorted[mid] > 0) hi = mid;
      else lo = mid + 1;
    }
    num_zeros = lo;
  }
  __syncthreads();
  int64_t num_nonzero = row.length - num_zeros;
  for (int k = threadIdx.x; k < num_edges; k += blockDim.x)
    edges[k] = num_nonzero > 0
                   ? LinearQuantile(row_sorted + num_zeros, num_nonzero, LinspaceUnit(k, num_edges))
                   : 0.0;
  __syncthreads();
  const T *values = static_cast<const T *>(rows.values[r]);
  for (int64_t j = threadIdx.x; j < row.length; j += blockDim.x) {
    if (values[j] == T(0)) {
      out[r][j] = 0;
      continue;
    }
    double v = static_cast<double>(values[j]);
    int lo = 0, hi = num_edges;  // upper bound: edges <= v
    while (lo < hi) {
      int mid = (lo + hi) / 2;
      if (edges[mid] <= v) lo = mid + 1;
      else hi = mid;
    }
    out[r][j] = lo;
  }
}

void CheckLaunch(const char *what) {
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw Error(StrCat(what, ": CUDA launch failed: ", cudaGetErrorString(status)));
}

void CheckCuda(cudaError_t status, const char *what) {
  if (status != cudaSuccess) throw Error(StrCat(what, ": ", cudaGetErrorString(status)));
}

}  // namespace

void Normalize(const Rows &rows, const NormalizeOptions &options, float *const *out,
               int *error_flags, cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    NormalizeKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(rows, options.target_sum, options.log1p,
                                                             out, error_flags);
  });
  CheckLaunch("normalize");
}

void GatherSelected(const Rows &rows, const int32_t *source_element, const int32_t *positions,
                    const int64_t *out_offsets, void *const *out_values, int32_t *const *out_indices,
                    cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    GatherKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(rows, source_element, positions, out_offsets,
                                                          out_values, out_indices);
  });
  CheckLaunch("select_genes");
}

namespace {

template <bool kNormalize>
void LaunchDensify(const Rows &rows, int64_t n_features, const int32_t *gene_table, int64_t table_size,
                   int64_t out_length, DenseType type, const NormalizeOptions &normalize,
                   void *const *out, int *error_flags, cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    switch (type) {
      case DenseType::kFloat32:
        DensifyKernel<T, DenseType::kFloat32, kNormalize><<<rows.num_rows, kBlock, 0, stream>>>(
            rows, n_features, gene_table, table_size, out_length, normalize, out, error_flags);
        break;
      case DenseType::kFloat16:
        DensifyKernel<T, DenseType::kFloat16, kNormalize><<<rows.num_rows, kBlock, 0, stream>>>(
            rows, n_features, gene_table, table_size, out_length, normalize, out, error_flags);
        break;
      case DenseType::kBFloat16:
        DensifyKernel<T, DenseType::kBFloat16, kNormalize><<<rows.num_rows, kBlock, 0, stream>>>(
            rows, n_features, gene_table, table_size, out_length, normalize, out, error_flags);
        break;
    }
  });
  CheckLaunch("densify");
}

}  // namespace

void Densify(const Rows &rows, int64_t n_features, const int32_t *gene_table, int64_t table_size,
             int64_t out_length, DenseType type, const NormalizeOptions *normalize, void *const *out,
             int *error_flags, cudaStream_t stream) {
  if (normalize)
    LaunchDensify<true>(rows, n_features, gene_table, table_size, out_length, type, *normalize, out,
                        error_flags, stream);
  else
    LaunchDensify<false>(rows, n_features, gene_table, table_size, out_length, type, NormalizeOptions{},
                         out, error_flags, stream);
}

void Downsample(const Rows &rows, const float *fraction, const float *target_total, int64_t seed,
                uint64_t batch_counter, uint32_t random_stream, void *const *out, int *error_flags,
                cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    DownsampleKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(
        rows, fraction, target_total, seed, batch_counter, random_stream, out, error_flags);
  });
  CheckLaunch("downsample");
}

void Mask(const Rows &rows, const float *probability, int64_t seed, uint64_t batch_counter,
          uint32_t random_stream, void *const *out, cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    MaskKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(rows, probability, seed, batch_counter,
                                                        random_stream, out);
  });
  CheckLaunch("mask");
}

void RankTokens(const Rows &rows, const float *medians, int64_t n_medians,
                const RankTokensOptions &options, int32_t *const *tokens, int32_t *const *lengths,
                int *error_flags, Scratch &scratch, cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  int64_t n = rows.total_nnz;
  auto *keys = static_cast<uint64_t *>(scratch.Allocate(2 * n * sizeof(uint64_t) + 1));
  auto *columns = static_cast<int32_t *>(scratch.Allocate(2 * n * sizeof(int32_t) + 1));
  uint64_t *keys_by_column = keys + n;
  int32_t *columns_sorted = columns + n;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    RankKeysKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(rows, medians, n_medians, options.max_length,
                                                            keys, columns, lengths, error_flags);
  });
  CheckLaunch("rank_tokens");
  if (n > 0) {
    // Two stable passes give (key ascending, column ascending) whatever the input order.
    const int64_t *begin = rows.offsets, *end = rows.offsets + 1;
    int num_items = static_cast<int>(n);
    // One segmented stable sort of (key, value) pairs per row; with temp == nullptr it only
    // sizes its temporary storage.
    auto sort_pass = [&](void *temp, size_t &temp_nbytes, const auto *keys_in, auto *keys_out,
                         const auto *values_in, auto *values_out) {
      CheckCuda(cub::DeviceSegmentedSort::StableSortPairs(temp, temp_nbytes, keys_in, keys_out, values_in,
                                                          values_out, num_items, rows.num_rows, begin, end,
                                                          stream), "rank_tokens sort");
    };
    size_t temp_nbytes = 0, pass_nbytes = 0;
    sort_pass(nullptr, temp_nbytes, columns, columns_sorted, keys, keys_by_column);
    sort_pass(nullptr, pass_nbytes, keys_by_column, keys, columns_sorted, columns);
    temp_nbytes = temp_nbytes > pass_nbytes ? temp_nbytes : pass_nbytes;
    void *temp = scratch.Allocate(temp_nbytes);
    sort_pass(temp, temp_nbytes, columns, columns_sorted, keys, keys_by_column);
    sort_pass(temp, temp_nbytes, keys_by_column, keys, columns_sorted, columns);
  }
  WriteTokensKernel<<<rows.num_rows, kBlock, 0, stream>>>(rows.offsets, columns, options, tokens, lengths);
  CheckLaunch("rank_tokens");
}

void BinValues(const Rows &rows, int n_bins, int32_t *const *out, int *error_flags,
               Scratch &scratch, cudaStream_t stream) {
  if (rows.num_rows == 0) return;
  int64_t n = rows.total_nnz;
  auto *values = static_cast<double *>(scratch.Allocate(2 * n * sizeof(double) + 1));
  double *sorted = values + n;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    GatherAsDoubleKernel<T><<<rows.num_rows, kBlock, 0, stream>>>(rows, values, error_flags);
  });
  CheckLaunch("bin_values");
  if (n > 0) {
    size_t temp_nbytes = 0;
    int num_items = static_cast<int>(n);
    CheckCuda(cub::DeviceSegmentedSort::SortKeys(nullptr, temp_nbytes, values, sorted, num_items,
                                                 rows.num_rows, rows.offsets, rows.offsets + 1, stream),
              "bin_values sort");
    void *temp = scratch.Allocate(temp_nbytes);
    CheckCuda(cub::DeviceSegmentedSort::SortKeys(temp, temp_nbytes, values, sorted, num_items,
                                                 rows.num_rows, rows.offsets, rows.offsets + 1, stream),
              "bin_values sort");
  }
  int num_edges = n_bins - 1;
  BIODALI_VALUE_TYPE_SWITCH(rows.value_dtype, T, {
    DigitizeKernel<T><<<rows.num_rows, kBlock, num_edges * sizeof(double), stream>>>(rows, sorted,
                                                                                    num_edges, out);
  });
  CheckLaunch("bin_values");
}

}  // namespace biodali::expression::gpu
