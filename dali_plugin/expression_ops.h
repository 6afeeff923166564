// DALI glue shared by the CPU (.cc) and GPU (.cu) expression operators: argument parsing,
// input checks and the random operators' checkpointable state. The work is in csrc/expression.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#include "dali/pipeline/operator/checkpointing/op_checkpoint.h"
#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#pragma GCC diagnostic pop
#include "common/error.h"
#include "dali_plugin/dtypes.h"
#include "expression/transforms.h"

namespace biodali::plugin {

// Rejects what no transform accepts: values and indices of different batch sizes or lengths,
// non-1-D rows, indices that are not int32, value types the transforms do not handle.
inline void CheckSparseInputs(const dali::Workspace &ws, int num_index_inputs) {
  const auto &value_shapes = ws.GetInputShape(0);
  DType value_dtype = FromDali(ws.GetInputDataType(0));
  if (!expression::IsSupportedValueType(value_dtype))
    throw Error(StrCat("values of type ", DTypeName(value_dtype),
                       " are not supported; cast them first (e.g. the reader's dtype=types.FLOAT)"));
  if (value_shapes.sample_dim() != 1)
    throw Error(StrCat("values must be 1-D rows, got ", value_shapes.sample_dim(), "-D samples"));
  if (num_index_inputs == 0) return;
  const auto &index_shapes = ws.GetInputShape(1);
  if (ws.GetInputDataType(1) != ::DALI_INT32)
    throw Error(StrCat("indices must be int32, got ", dali::to_string(ws.GetInputDataType(1))));
  if (index_shapes.num_samples() != value_shapes.num_samples())
    throw Error(StrCat("values and indices have different batch sizes (",
                       value_shapes.num_samples(), " and ", index_shapes.num_samples(), ")"));
  if (index_shapes.sample_dim() != 1)
    throw Error(StrCat("indices must be 1-D rows, got ", index_shapes.sample_dim(), "-D samples"));
  for (int s = 0; s < value_shapes.num_samples(); ++s)
    if (value_shapes[s][0] != index_shapes[s][0])
      throw Error(StrCat("sample ", s, ": values has ", value_shapes[s][0], " elements but indices has ",
                         index_shapes[s][0]));
}

inline expression::NormalizeOptions NormalizeOptionsFrom(const dali::OpSpec &spec) {
  expression::NormalizeOptions options;
  options.target_sum = spec.GetArgument<float>("target_sum");
  options.log1p = spec.GetArgument<bool>("log1p");
  if (!(options.target_sum > 0)) throw Error("target_sum must be > 0");
  return options;
}

inline std::vector<int64_t> GeneColumnsFrom(const dali::OpSpec &spec) {
  std::vector<int64_t> genes;
  if (spec.HasArgument("genes")) {
    for (int g : spec.GetRepeatedArgument<int>("genes")) genes.push_back(g);
    if (genes.empty()) throw Error("`genes` is empty: give at least one column");
  }
  return genes;
}

// A gene column at or past n_features can never be filled: refuse it rather than output zeros.
inline void CheckGenesWithin(const std::vector<int64_t> &genes, int64_t n_features) {
  if (n_features <= 0) return;
  for (int64_t g : genes)
    if (g >= n_features)
      throw Error(StrCat("gene column ", g, " is outside [0, n_features=", n_features, ")"));
}

inline expression::DenseType DenseTypeFrom(const dali::OpSpec &spec) {
  std::string name = spec.GetArgument<std::string>("dtype");
  if (name == "float32" || name == "float") return expression::DenseType::kFloat32;
  if (name == "float16") return expression::DenseType::kFloat16;
  if (name == "bfloat16") return expression::DenseType::kBFloat16;
  throw Error(StrCat("dtype must be float32, float16 or bfloat16, got \"", name, "\""));
}

// DALI has no bfloat16: bfloat16 rows travel as uint16 bit patterns (biodali.torch views them).
inline dali::DALIDataType DaliTypeOf(expression::DenseType type) {
  switch (type) {
    case expression::DenseType::kFloat16: return ::DALI_FLOAT16;
    case expression::DenseType::kBFloat16: return ::DALI_UINT16;
    default: return ::DALI_FLOAT;
  }
}

inline expression::RankTokensOptions RankTokensOptionsFrom(const dali::OpSpec &spec) {
  expression::RankTokensOptions options;
  options.max_length = spec.GetArgument<int>("max_length");
  options.pad_id = spec.GetArgument<int>("pad_id");
  options.token_offset = spec.GetArgument<int>("token_offset");
  if (options.max_length <= 0) throw Error("max_length must be > 0");
  return options;
}

inline std::vector<float> GeneMediansFrom(const dali::OpSpec &spec) {
  auto medians = spec.GetRepeatedArgument<float>("gene_medians");
  if (medians.empty()) throw Error("gene_medians is empty: give one median per column");
  return medians;
}

inline int NumBinsFrom(const dali::OpSpec &spec) {
  int n_bins = spec.GetArgument<int>("n_bins");
  // The GPU keeps a row's bin edges in shared memory: 4096 doubles at most.
  if (n_bins < 2 || n_bins > 4097) throw Error(StrCat("n_bins must be in [2, 4097], got ", n_bins));
  return n_bins;
}

// A float argument per sample: the tensor argument input (one number per sample) when given,
// else the scalar replicated. (DALI's own GetPerSampleArgument indexes an empty shape list for
// scalar samples, which UBSan reports.)
inline void ReadPerSampleFloat(const dali::OpSpec &spec, const dali::Workspace &ws, const char *name,
                               int num_samples, std::vector<float> *out) {
  out->assign(num_samples, 0.f);
  if (!spec.HasTensorArgument(name)) {
    out->assign(num_samples, spec.GetArgument<float>(name));
    return;
  }
  const auto &input = ws.ArgumentInput(name);
  if (input.num_samples() != num_samples)
    throw Error(StrCat("`", name, "` has ", input.num_samples(), " samples, the batch ", num_samples));
  for (int s = 0; s < num_samples; ++s) {
    if (input[s].shape().num_elements() != 1)
      throw Error(StrCat("sample ", s, ": `", name, "` must hold one number, got shape ", input[s].shape()));
    switch (input.type()) {
      case ::DALI_FLOAT: (*out)[s] = *input[s].data<float>(); break;
      case ::DALI_FLOAT64: (*out)[s] = static_cast<float>(*input[s].data<double>()); break;
      default:
        throw Error(StrCat("`", name, "` must be float32 or float64, got ", dali::to_string(input.type())));
    }
  }
}

// Seed + batch counter of a random operator. Draws are keyed by (seed, batch counter, sample,
// element), so the CPU and GPU variants draw the same numbers and every batch draws anew; the
// counter is the whole state a checkpoint needs.
template <typename Backend>
class RandomExpressionOp : public dali::Operator<Backend> {
 public:
  void SaveState(dali::OpCheckpoint &cpt, dali::AccessOrder) override {
    cpt.MutableCheckpointState() = batch_counter_;
  }
  void RestoreState(const dali::OpCheckpoint &cpt) override {
    batch_counter_ = cpt.CheckpointState<uint64_t>();
  }
  std::string SerializeCheckpoint(const dali::OpCheckpoint &cpt) const override {
    return std::to_string(cpt.CheckpointState<uint64_t>());
  }
  void DeserializeCheckpoint(dali::OpCheckpoint &cpt, const std::string &data) const override {
    cpt.MutableCheckpointState() = static_cast<uint64_t>(std::stoull(data));
  }

 protected:
  RandomExpressionOp(const dali::OpSpec &spec, uint32_t stream)
      : dali::Operator<Backend>(spec), seed_(spec.GetArgument<int64_t>("seed")), stream_(stream) {}

  expression::RowRandom RowRandomFor(int sample) const {
    return expression::RowRandom::For(seed_, batch_counter_, static_cast<uint32_t>(sample), stream_);
  }

  int64_t seed_;
  uint32_t stream_;
  uint64_t batch_counter_ = 0;
};

// Random streams, so two random operators with one seed still draw differently.
constexpr uint32_t kDownsampleStream = 1;
constexpr uint32_t kMaskStream = 2;

// downsample's setup, shared by both backends: per-sample fraction or target_total.
template <typename Backend>
class DownsampleBase : public RandomExpressionOp<Backend> {
 protected:
  explicit DownsampleBase(const dali::OpSpec &spec) : RandomExpressionOp<Backend>(spec, kDownsampleStream) {}

  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 0);
    int n = ws.GetInputShape(0).num_samples();
    ReadPerSampleFloat(this->spec_, ws, "fraction", n, &fraction_);
    ReadPerSampleFloat(this->spec_, ws, "target_total", n, &target_total_);
    for (int s = 0; s < n; ++s) {
      bool has_fraction = fraction_[s] >= 0, has_target = target_total_[s] >= 0;
      if (has_fraction == has_target)
        throw Error(StrCat("sample ", s, ": give exactly one of fraction and target_total"));
      if (has_fraction && fraction_[s] > 1)
        throw Error(StrCat("sample ", s, ": fraction must be in [0, 1], got ", fraction_[s]));
    }
    out = {{ws.GetInputShape(0), ws.GetInputDataType(0)}};
    return true;
  }

  std::vector<float> fraction_, target_total_;
};

// mask's setup, shared by both backends: per-sample probability.
template <typename Backend>
class MaskBase : public RandomExpressionOp<Backend> {
 protected:
  explicit MaskBase(const dali::OpSpec &spec) : RandomExpressionOp<Backend>(spec, kMaskStream) {}

  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, ws.NumInput() - 1);
    ReadPerSampleFloat(this->spec_, ws, "probability", ws.GetInputShape(0).num_samples(), &probability_);
    for (size_t s = 0; s < probability_.size(); ++s)
      if (!(probability_[s] >= 0 && probability_[s] <= 1))
        throw Error(StrCat("sample ", s, ": probability must be in [0, 1], got ", probability_[s]));
    out = {{ws.GetInputShape(0), ws.GetInputDataType(0)}};
    return true;
  }

  std::vector<float> probability_;
};

// densify / normalize_densify arguments, parsed once for either backend.
struct DensifyConfig {
  std::unique_ptr<expression::GeneSelection> genes;
  int64_t n_features = 0;
  expression::DenseType type = expression::DenseType::kFloat32;
  std::optional<expression::NormalizeOptions> normalize;  // normalize_densify

  DensifyConfig(const dali::OpSpec &spec, bool with_normalize) {
    auto columns = GeneColumnsFrom(spec);
    if (!columns.empty()) genes = std::make_unique<expression::GeneSelection>(columns);
    n_features = spec.GetArgument<int64_t>("n_features");
    type = DenseTypeFrom(spec);
    if (with_normalize) normalize = NormalizeOptionsFrom(spec);
    if (!genes && n_features <= 0) throw Error("densify needs n_features (the number of columns) or genes");
    CheckGenesWithin(columns, n_features);
  }
  int64_t OutLength() const { return genes ? genes->size() : n_features; }
  expression::DensifyOptions Options() const { return {n_features, type, genes.get()}; }
  dali::OutputDesc Output(int num_samples) const {
    return {dali::uniform_list_shape(num_samples, {OutLength()}), DaliTypeOf(type)};
  }
};

}  // namespace biodali::plugin
