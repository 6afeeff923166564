// fn.biodali.expression.*: schemas and CPU operators (the GPU variants are in
// expression_ops_gpu.cu). Each CPU operator runs its row function from csrc/expression over the
// batch on DALI's thread pool.
#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "dali_plugin/expression_ops.h"
#include "expression/value_types.h"

namespace biodali::plugin {
namespace {

using dali::CPUBackend;

// Runs fn(sample, thread) for every sample on the pool; an error names its sample.
template <typename Fn>
void ForEachSample(dali::Workspace &ws, int num_samples, const dali::TensorListShape<> &costs, Fn &&fn) {
  auto &pool = ws.GetThreadPool();
  for (int s = 0; s < num_samples; ++s) {
    pool.AddWork([&fn, s](int thread) {
      try {
        fn(s, thread);
      } catch (const std::exception &e) {
        throw Error(StrCat("sample ", s, ": ", e.what()));
      }
    }, costs.num_samples() > s ? costs.tensor_size(s) : 0);
  }
  pool.RunAll();
}

template <typename T>
const T *InputRow(const dali::Workspace &ws, int input, int sample) {
  return static_cast<const T *>(ws.Input<CPUBackend>(input).raw_tensor(sample));
}

template <typename T>
T *OutputRow(dali::Workspace &ws, int output, int sample) {
  return static_cast<T *>(ws.Output<CPUBackend>(output).raw_mutable_tensor(sample));
}

DType ValueDType(const dali::Workspace &ws) { return FromDali(ws.GetInputDataType(0)); }

class NormalizeCpu : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit NormalizeCpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), options_(NormalizeOptionsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 0);
    out = {{ws.GetInputShape(0), ::DALI_FLOAT}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int) {
        expression::NormalizeRow(InputRow<T>(ws, 0, s), shapes[s][0], options_, OutputRow<float>(ws, 0, s));
      });
    });
  }

 private:
  expression::NormalizeOptions options_;
};

class SelectGenesCpu : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit SelectGenesCpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), genes_(GeneColumnsFrom(spec)) {}

 protected:
  // The output lengths depend on the indices: the selection itself runs here, the copy in Run.
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 1);
    const auto &shapes = ws.GetInputShape(1);
    int n = shapes.num_samples();
    kept_.resize(n);
    slots_.resize(ws.GetThreadPool().NumThreads());
    dali::TensorListShape<1> out_shape(n);
    auto &pool = ws.GetThreadPool();
    for (int s = 0; s < n; ++s)
      pool.AddWork([&, s](int thread) {
        try {
          expression::SelectRow(InputRow<int32_t>(ws, 1, s), shapes[s][0], genes_, &kept_[s], &slots_[thread]);
        } catch (const std::exception &e) {
          throw Error(StrCat("sample ", s, ": ", e.what()));
        }
      }, shapes.tensor_size(s));
    pool.RunAll();
    for (int s = 0; s < n; ++s) out_shape.set_tensor_shape(s, {static_cast<int64_t>(kept_[s].size())});
    out = {{out_shape, ws.GetInputDataType(0)}, {out_shape, ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int) {
        const T *values = InputRow<T>(ws, 0, s);
        T *out_values = OutputRow<T>(ws, 0, s);
        int32_t *out_indices = OutputRow<int32_t>(ws, 1, s);
        for (size_t k = 0; k < kept_[s].size(); ++k) {
          out_values[k] = values[kept_[s][k].second];
          out_indices[k] = kept_[s][k].first;
        }
      });
    });
  }

 private:
  expression::GeneSelection genes_;
  std::vector<std::vector<std::pair<int32_t, int32_t>>> kept_;
  std::vector<std::vector<int32_t>> slots_;
};

// densify, and normalize_densify (normalize -> select -> densify fused) when `normalize` is set.
class DensifyCpu : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit DensifyCpu(const dali::OpSpec &spec, bool normalize = false)
      : StatelessOperator(spec), config_(spec, normalize), options_(config_.Options()) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 1);
    out = {config_.Output(ws.GetInputShape(0).num_samples())};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int) {
        void *out = ws.Output<CPUBackend>(0).raw_mutable_tensor(s);
        if (config_.normalize)
          expression::NormalizeDensifyRow(InputRow<T>(ws, 0, s), InputRow<int32_t>(ws, 1, s), shapes[s][0],
                                          *config_.normalize, options_, out);
        else
          expression::DensifyRow(InputRow<T>(ws, 0, s), InputRow<int32_t>(ws, 1, s), shapes[s][0], options_, out);
      });
    });
  }

 private:
  DensifyConfig config_;
  expression::DensifyOptions options_;
};

class NormalizeDensifyCpu final : public DensifyCpu {
 public:
  explicit NormalizeDensifyCpu(const dali::OpSpec &spec) : DensifyCpu(spec, true) {}
};

class DownsampleCpu : public DownsampleBase<CPUBackend> {
 public:
  explicit DownsampleCpu(const dali::OpSpec &spec) : DownsampleBase(spec) {}

 protected:
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int) {
        expression::DownsampleRow(InputRow<T>(ws, 0, s), shapes[s][0], fraction_[s], target_total_[s],
                                  RowRandomFor(s), OutputRow<T>(ws, 0, s));
      });
    });
    ++batch_counter_;
  }
};

class MaskCpu : public MaskBase<CPUBackend> {
 public:
  explicit MaskCpu(const dali::OpSpec &spec) : MaskBase(spec) {}

 protected:
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    bool keyed_by_column = ws.NumInput() > 1;
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int) {
        expression::MaskRow(InputRow<T>(ws, 0, s), keyed_by_column ? InputRow<int32_t>(ws, 1, s) : nullptr,
                            shapes[s][0], probability_[s], RowRandomFor(s), OutputRow<T>(ws, 0, s));
      });
    });
    ++batch_counter_;
  }
};

class RankTokensCpu : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit RankTokensCpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), medians_(GeneMediansFrom(spec)), options_(RankTokensOptionsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 1);
    int n = ws.GetInputShape(0).num_samples();
    scratch_.resize(ws.GetThreadPool().NumThreads());
    out = {{dali::uniform_list_shape(n, {options_.max_length}), ::DALI_INT32},
           {dali::uniform_list_shape(n, dali::TensorShape<>{}), ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int thread) {
        int64_t length = expression::RankTokensRow(
            InputRow<T>(ws, 0, s), InputRow<int32_t>(ws, 1, s), shapes[s][0], medians_.data(),
            static_cast<int64_t>(medians_.size()), options_, OutputRow<int32_t>(ws, 0, s), &scratch_[thread]);
        *OutputRow<int32_t>(ws, 1, s) = static_cast<int32_t>(length);
      });
    });
  }

 private:
  std::vector<float> medians_;
  expression::RankTokensOptions options_;
  std::vector<std::vector<std::pair<double, int32_t>>> scratch_;
};

class BinValuesCpu : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit BinValuesCpu(const dali::OpSpec &spec) : StatelessOperator(spec), n_bins_(NumBinsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 0);
    scratch_.resize(ws.GetThreadPool().NumThreads());
    out = {{ws.GetInputShape(0), ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto &shapes = ws.GetInputShape(0);
    BIODALI_VALUE_TYPE_SWITCH(ValueDType(ws), T, {
      ForEachSample(ws, shapes.num_samples(), shapes, [&](int s, int thread) {
        expression::BinValuesRow(InputRow<T>(ws, 0, s), shapes[s][0], n_bins_, OutputRow<int32_t>(ws, 0, s),
                                 &scratch_[thread]);
      });
    });
  }

 private:
  int n_bins_;
  std::vector<std::vector<double>> scratch_;
};

}  // namespace
}  // namespace biodali::plugin

DALI_REGISTER_OPERATOR(biodali__expression__Normalize, biodali::plugin::NormalizeCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__SelectGenes, biodali::plugin::SelectGenesCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__Densify, biodali::plugin::DensifyCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__NormalizeDensify, biodali::plugin::NormalizeDensifyCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__Downsample, biodali::plugin::DownsampleCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__Mask, biodali::plugin::MaskCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__RankTokens, biodali::plugin::RankTokensCpu, dali::CPU);
DALI_REGISTER_OPERATOR(biodali__expression__BinValues, biodali::plugin::BinValuesCpu, dali::CPU);
