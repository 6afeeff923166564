// Schemas of fn.biodali.expression.*: one definition for the CPU and the GPU operators.
#include "dali_plugin/expression_ops.h"

namespace {
constexpr const char *kValuesDoc = "Non-zero values of one cell (1-D, any numeric type but float16/bool).";
constexpr const char *kIndicesDoc = "Column ids of `values` (1-D int32, same length).";
}  // namespace

DALI_SCHEMA(biodali__expression__Normalize)
    .DocStr(R"(Library-size normalization of sparse rows, as scanpy's ``normalize_total`` followed by
``log1p``: ``log1p(values / sum(values) * target_sum)``, float32. All-zero rows stay zero;
negative values are an error.)")
    .NumInput(1)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .AddOptionalArg("target_sum", "Total of every row after scaling.", 1e4f)
    .AddOptionalArg("log1p", "Apply log1p after scaling.", true);

DALI_SCHEMA(biodali__expression__SelectGenes)
    .DocStr(R"(Keeps the entries whose column is in ``genes`` and renumbers them to their position in
``genes``; outputs ``(values, indices)`` as canonical CSR rows (ordered by position). On the GPU,
``indices`` must stay on the CPU: output lengths depend on them. ``biodali.expression.select_genes``
accepts gene names.)")
    .NumInput(2)
    .NumOutput(2)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .InputDox(1, "indices", "TensorList", kIndicesDoc)
    .InputDevice(1, dali::InputDevice::CPU)
    .AddArg("genes", "Column ids to keep, in output order.", ::DALI_INT_VEC);

DALI_SCHEMA(biodali__expression__Densify)
    .DocStr(R"(Sparse rows to dense rows of ``n_features`` (or ``len(genes)``, selecting and ordering
columns on the way) in float32, float16 or bfloat16 (carried as uint16 bit patterns; DALI has no
bfloat16 type). Repeated columns in a row (not canonical CSR) are summed, as scipy does; in
float16/bfloat16 each addition is rounded to the output type.)")
    .NumInput(2)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .InputDox(1, "indices", "TensorList", kIndicesDoc)
    .AddOptionalArg("n_features", "Number of columns; indices must be below it (0: unchecked, needs genes).", int64_t{0})
    .AddOptionalArg<std::vector<int>>("genes", "Output only these columns, in this order.", nullptr)
    .AddOptionalArg("dtype", "float32, float16 or bfloat16.", "float32");

DALI_SCHEMA(biodali__expression__NormalizeDensify)
    .DocStr(R"(``normalize`` -> ``select_genes`` -> ``densify`` fused into one pass: the row total
uses every value, log1p is computed only for the columns that reach the output. Same results as
the three operators in a row (same arguments as ``normalize`` and ``densify``).)")
    .NumInput(2)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .InputDox(1, "indices", "TensorList", kIndicesDoc)
    .AddParent("biodali__expression__Normalize")
    .AddParent("biodali__expression__Densify");

DALI_SCHEMA(biodali__expression__Downsample)
    .DocStr(R"(Binomial thinning of integer counts: every read of a cell is kept with probability
``fraction``, or ``target_total / total`` (cells at or below ``target_total`` are unchanged).
Same dtype out; non-integer or negative counts, and counts above 2^24, are an error (the cost is
one random draw per count). Draws depend on ``seed``, the batch
and the sample, identically on CPU and GPU, and change every batch.)")
    .NumInput(1)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .AddOptionalArg("fraction", "Probability of keeping each read (-1: use target_total).", -1.f, true)
    .AddOptionalArg("target_total", "Expected total after thinning (-1: use fraction).", -1.f, true)
    .AddRandomSeedArg();

DALI_SCHEMA(biodali__expression__Mask)
    .DocStr(R"(Random gene dropout: each value becomes 0 with ``probability``; the row keeps its
length (dropped genes hold 0). With ``indices`` the draws are keyed by column, so two arrays of
one cell get the same mask. Identical on CPU and GPU for the same seed; new draws every batch.)")
    .NumInput(1, 2)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .InputDox(1, "indices", "TensorList", kIndicesDoc)
    .AddOptionalArg("probability", "Probability that a gene is dropped.", 0.15f, true)
    .AddRandomSeedArg();

DALI_SCHEMA(biodali__expression__RankTokens)
    .DocStr(R"(Geneformer's rank-value encoding: genes with a non-zero value and a positive median,
ordered by ``value / gene_medians[column]`` descending (ties: lower column first); outputs the
first ``max_length`` column ids plus ``token_offset`` padded with ``pad_id`` (int32
[max_length]) and the number of real tokens (int32 scalar).)")
    .NumInput(2)
    .NumOutput(2)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .InputDox(1, "indices", "TensorList", kIndicesDoc)
    .AddArg("gene_medians", "Median of each column's normalized non-zero values (0: gene left out).",
            ::DALI_FLOAT_VEC)
    .AddOptionalArg("max_length", "Tokens per cell.", 2048)
    .AddOptionalArg("pad_id", "Token after the last gene.", 0)
    .AddOptionalArg("token_offset", "Added to every column id (to leave room for special tokens).", 0);

DALI_SCHEMA(biodali__expression__BinValues)
    .DocStr(R"(scGPT's per-cell value binning: each non-zero value becomes
``numpy.digitize(v, numpy.quantile(nonzero_values, numpy.linspace(0, 1, n_bins - 1)))`` (1 ..
n_bins - 1, computed in float64); zeros stay 0. int32, same length.)")
    .NumInput(1)
    .NumOutput(1)
    .InputDox(0, "values", "TensorList", kValuesDoc)
    .AddOptionalArg("n_bins", "Number of bins, the zero bin included.", 51);
