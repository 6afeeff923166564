// CPU half of the kernel C API (kernels_api.h): the expression CPU twins over a CSR batch in
// host memory, row by row on the calling thread, as the CPU operators run them per sample.
#include "capi/kernels_api.h"

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "expression/value_types.h"

namespace {

using namespace biodali;
using namespace biodali::kapi;
namespace ex = biodali::expression;

// Runs fn(r, begin, length) for every row; an error names its row.
template <typename Fn>
void ForEachRow(const int64_t *offsets, int num_rows, Fn &&fn) {
  if (num_rows < 0) throw Error(StrCat("num_rows must be >= 0, got ", num_rows));
  for (int r = 0; r < num_rows; ++r) {
    int64_t begin = offsets[r], length = offsets[r + 1] - offsets[r];
    if (length < 0) throw Error(StrCat("row ", r, ": offsets decrease"));
    try {
      fn(r, begin, length);
    } catch (const std::exception &e) {
      throw Error(StrCat("row ", r, ": ", e.what()));
    }
  }
}

std::vector<int64_t> GeneList(const int64_t *genes, int64_t n_genes) {
  if (n_genes < 0) throw Error("n_genes must be >= 0");
  return std::vector<int64_t>(genes, genes + n_genes);
}

}  // namespace

BIODALI_KAPI int biodali_kcpu_normalize(const char *dtype, const void *values, const int64_t *offsets,
                                        int num_rows, double target_sum, int log1p, float *out, char *err,
                                        size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    ex::NormalizeOptions options{target_sum, log1p != 0};
    BIODALI_VALUE_TYPE_SWITCH(ValueType(dtype), T, {
      ForEachRow(offsets, num_rows, [&](int, int64_t begin, int64_t length) {
        ex::NormalizeRow(static_cast<const T *>(values) + begin, length, options, out + begin);
      });
    });
  });
}

// The column -> position table of a gene list (-1: not selected), as the GPU densify takes it.
// With table == nullptr only *table_size (max gene + 1) is set.
BIODALI_KAPI int biodali_kcpu_gene_table(const int64_t *genes, int64_t n_genes, int32_t *table,
                                         int64_t table_cap, int64_t *table_size, char *err,
                                         size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    ex::GeneSelection selection(GeneList(genes, n_genes));
    const auto &t = selection.table();
    *table_size = static_cast<int64_t>(t.size());
    if (table == nullptr) return;
    if (table_cap < *table_size) throw Error(StrCat("gene table needs ", *table_size, " entries"));
    std::copy(t.begin(), t.end(), table);
  });
}

// select_genes as the CPU operator runs it: for row r, out_offsets[r]..out_offsets[r + 1] hold
// the kept entries' source element (within the row), position in `genes` and value. The output
// arrays need room for offsets[num_rows] entries; out_elements/out_positions are what the GPU
// gather (biodali_kgpu_gather_selected) takes.
BIODALI_KAPI int biodali_kcpu_select_genes(const char *dtype, const void *values, const int32_t *indices,
                                           const int64_t *offsets, int num_rows, const int64_t *genes,
                                           int64_t n_genes, int64_t *out_offsets, int32_t *out_elements,
                                           int32_t *out_positions, void *out_values, char *err,
                                           size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    DType type = ValueType(dtype);
    ex::GeneSelection selection(GeneList(genes, n_genes));
    std::vector<std::pair<int32_t, int32_t>> kept;
    std::vector<int32_t> slots;
    out_offsets[0] = 0;
    BIODALI_VALUE_TYPE_SWITCH(type, T, {
      ForEachRow(offsets, num_rows, [&](int r, int64_t begin, int64_t length) {
        ex::SelectRow(indices + begin, length, selection, &kept, &slots);
        int64_t o = out_offsets[r];
        const T *row = static_cast<const T *>(values) + begin;
        for (size_t k = 0; k < kept.size(); ++k) {
          out_positions[o + k] = kept[k].first;
          out_elements[o + k] = kept[k].second;
          static_cast<T *>(out_values)[o + k] = row[kept[k].second];
        }
        out_offsets[r + 1] = o + static_cast<int64_t>(kept.size());
      });
    });
  });
}

// Dense rows [num_rows, out_length] (out_length = n_genes with a gene list, else n_features) of
// `dense_type`; with normalize != 0 the fused normalize_densify.
BIODALI_KAPI int biodali_kcpu_densify(const char *dtype, const void *values, const int32_t *indices,
                                      const int64_t *offsets, int num_rows, int64_t n_features,
                                      const int64_t *genes, int64_t n_genes, const char *dense_type,
                                      int normalize, double target_sum, int log1p, void *out, char *err,
                                      size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    DType type = ValueType(dtype);
    std::optional<ex::GeneSelection> selection;
    if (genes != nullptr && n_genes > 0) selection.emplace(GeneList(genes, n_genes));
    ex::DensifyOptions options;
    options.n_features = n_features;
    options.type = DenseTypeOf(dense_type);
    options.genes = selection ? &*selection : nullptr;
    int64_t out_length = selection ? selection->size() : n_features;
    if (out_length <= 0) throw Error("densify needs n_features > 0 or a gene list");
    size_t row_bytes = static_cast<size_t>(out_length) * ex::DenseTypeSize(options.type);
    ex::NormalizeOptions norm{target_sum, log1p != 0};
    BIODALI_VALUE_TYPE_SWITCH(type, T, {
      ForEachRow(offsets, num_rows, [&](int r, int64_t begin, int64_t length) {
        void *dense = static_cast<char *>(out) + static_cast<size_t>(r) * row_bytes;
        const T *v = static_cast<const T *>(values) + begin;
        if (normalize) ex::NormalizeDensifyRow(v, indices + begin, length, norm, options, dense);
        else ex::DensifyRow(v, indices + begin, length, options, dense);
      });
    });
  });
}

// fraction[r] >= 0 thins by that fraction, else to target_total[r] (as the operator's arguments).
BIODALI_KAPI int biodali_kcpu_downsample(const char *dtype, const void *values, const int64_t *offsets,
                                         int num_rows, const float *fraction, const float *target_total,
                                         int64_t seed, uint64_t batch_counter, uint32_t random_stream,
                                         void *out, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    BIODALI_VALUE_TYPE_SWITCH(ValueType(dtype), T, {
      ForEachRow(offsets, num_rows, [&](int r, int64_t begin, int64_t length) {
        auto random = ex::RowRandom::For(seed, batch_counter, static_cast<uint32_t>(r), random_stream);
        ex::DownsampleRow(static_cast<const T *>(values) + begin, length, fraction[r], target_total[r], random,
                          static_cast<T *>(out) + begin);
      });
    });
  });
}

// indices == nullptr: draws keyed by position instead of column.
BIODALI_KAPI int biodali_kcpu_mask(const char *dtype, const void *values, const int32_t *indices,
                                   const int64_t *offsets, int num_rows, const float *probability,
                                   int64_t seed, uint64_t batch_counter, uint32_t random_stream, void *out,
                                   char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    BIODALI_VALUE_TYPE_SWITCH(ValueType(dtype), T, {
      ForEachRow(offsets, num_rows, [&](int r, int64_t begin, int64_t length) {
        auto random = ex::RowRandom::For(seed, batch_counter, static_cast<uint32_t>(r), random_stream);
        ex::MaskRow(static_cast<const T *>(values) + begin, indices ? indices + begin : nullptr, length,
                    probability[r], random, static_cast<T *>(out) + begin);
      });
    });
  });
}

// tokens: [num_rows, max_length] int32; lengths: [num_rows] int32.
BIODALI_KAPI int biodali_kcpu_rank_tokens(const char *dtype, const void *values, const int32_t *indices,
                                          const int64_t *offsets, int num_rows, const float *medians,
                                          int64_t n_medians, int64_t max_length, int32_t pad_id,
                                          int32_t token_offset, int32_t *tokens, int32_t *lengths, char *err,
                                          size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    if (max_length <= 0) throw Error("max_length must be > 0");
    ex::RankTokensOptions options{max_length, pad_id, token_offset};
    std::vector<std::pair<double, int32_t>> scratch;
    BIODALI_VALUE_TYPE_SWITCH(ValueType(dtype), T, {
      ForEachRow(offsets, num_rows, [&](int r, int64_t begin, int64_t length) {
        lengths[r] = static_cast<int32_t>(ex::RankTokensRow(
            static_cast<const T *>(values) + begin, indices + begin, length, medians, n_medians, options,
            tokens + static_cast<int64_t>(r) * max_length, &scratch));
      });
    });
  });
}

BIODALI_KAPI int biodali_kcpu_bin_values(const char *dtype, const void *values, const int64_t *offsets,
                                         int num_rows, int n_bins, int32_t *out, char *err, size_t err_cap) {
  return Guarded(err, err_cap, [&] {
    if (n_bins < 2 || n_bins > 4097) throw Error(StrCat("n_bins must be in [2, 4097], got ", n_bins));
    std::vector<double> scratch;
    BIODALI_VALUE_TYPE_SWITCH(ValueType(dtype), T, {
      ForEachRow(offsets, num_rows, [&](int, int64_t begin, int64_t length) {
        ex::BinValuesRow(static_cast<const T *>(values) + begin, length, n_bins, out + begin, &scratch);
      });
    });
  });
}

// Version of this C API (the CUDA half is there when biodali_kgpu_normalize is exported).
BIODALI_KAPI int biodali_kernels_api_version() { return 1; }
