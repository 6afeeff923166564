// GPU variants of fn.biodali.expression.* (schemas in expression_schemas.cc): per-batch pointer
// tables go up in one copy, one kernel launch per batch does the work (csrc/expression/
// transforms_gpu.cu), all on DALI's stream without synchronizing.
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "dali/kernels/dynamic_scratchpad.h"
#include "dali_plugin/expression_ops.h"
#include "expression/transforms_gpu.h"

namespace biodali::plugin {
namespace {

using dali::GPUBackend;
namespace gpu = expression::gpu;

void CheckCuda(cudaError_t status, const char *what) {
  if (status != cudaSuccess) throw Error(StrCat(what, ": ", cudaGetErrorString(status)));
}

class ScratchAdapter final : public gpu::Scratch {
 public:
  explicit ScratchAdapter(dali::kernels::DynamicScratchpad &scratchpad) : scratchpad_(scratchpad) {}
  void *Allocate(size_t nbytes) override {
    return scratchpad_.Alloc(dali::mm::memory_kind_id::device, nbytes, 256);
  }

 private:
  dali::kernels::DynamicScratchpad &scratchpad_;
};

// Kernels cannot throw: they OR ErrorFlag bits into a device word that is never cleared. After
// each batch the word is copied to pinned memory behind an event; every Run first reads the
// copy if the event has passed. Errors thus surface a batch or two late, without a sync.
class DeviceErrorFlags {
 public:
  ~DeviceErrorFlags() {
    if (event_) cudaEventDestroy(event_);
    if (host_) cudaFreeHost(host_);
    if (device_) cudaFree(device_);
  }
  int *Device(cudaStream_t stream) {
    if (!device_) {
      CheckCuda(cudaMalloc(&device_, sizeof(int)), "error flags");
      CheckCuda(cudaMallocHost(&host_, sizeof(int)), "error flags");
      *host_ = 0;
      CheckCuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "error flags");
      CheckCuda(cudaMemsetAsync(device_, 0, sizeof(int), stream), "error flags");
    }
    return device_;
  }
  void Publish(cudaStream_t stream) {
    CheckCuda(cudaMemcpyAsync(host_, device_, sizeof(int), cudaMemcpyDeviceToHost, stream), "error flags");
    CheckCuda(cudaEventRecord(event_, stream), "error flags");
  }
  void ThrowIfSet() const {
    if (!event_ || cudaEventQuery(event_) != cudaSuccess) return;
    int flags = *static_cast<volatile int *>(host_);
    if (flags & gpu::kNegativeValue)
      throw Error("a batch had a negative or NaN value (found on the GPU; the CPU variant names the element)");
    if (flags & gpu::kNonIntegerCount)
      throw Error("a batch had a negative, non-integer or > 2^24 count (found on the GPU)");
    if (flags & gpu::kColumnOutOfRange)
      throw Error("a batch had a column index outside [0, n_features) (found on the GPU)");
  }

 private:
  int *device_ = nullptr;
  int *host_ = nullptr;
  cudaEvent_t event_ = nullptr;
};

// Uploads the per-row pointer table and row offsets of inputs 0 (values) and, optionally, 1.
gpu::Rows UploadRows(const dali::Workspace &ws, bool with_indices, dali::kernels::DynamicScratchpad &scratch,
                     std::vector<int64_t> *offsets_out = nullptr) {
  const auto &values = ws.Input<GPUBackend>(0);
  int n = values.num_samples();
  std::vector<const void *> value_ptrs(n);
  std::vector<const int32_t *> index_ptrs(with_indices ? n : 0);
  std::vector<int64_t> offsets(n + 1, 0);
  for (int s = 0; s < n; ++s) {
    value_ptrs[s] = values.raw_tensor(s);
    offsets[s + 1] = offsets[s] + values.tensor_shape_span(s)[0];
    if (with_indices) index_ptrs[s] = ws.Input<GPUBackend>(1).tensor<int32_t>(s);
  }
  gpu::Rows rows{FromDali(values.type()), nullptr, nullptr, nullptr, n, offsets[n]};
  if (with_indices) {
    auto [v, i, o] = scratch.ToContiguousGPU(ws.stream(), value_ptrs, index_ptrs, offsets);
    rows.values = v;
    rows.indices = i;
    rows.offsets = o;
  } else {
    auto [v, o] = scratch.ToContiguousGPU(ws.stream(), value_ptrs, offsets);
    rows.values = v;
    rows.offsets = o;
  }
  if (offsets_out) *offsets_out = std::move(offsets);
  return rows;
}

template <typename T>
std::vector<T *> OutputPointers(dali::Workspace &ws, int output) {
  auto &out = ws.Output<GPUBackend>(output);
  std::vector<T *> ptrs(out.num_samples());
  for (int s = 0; s < out.num_samples(); ++s) ptrs[s] = static_cast<T *>(out.raw_mutable_tensor(s));
  return ptrs;
}

template <typename T>
T *ToDevice(dali::kernels::DynamicScratchpad &scratch, cudaStream_t stream, const std::vector<T> &host) {
  return std::get<0>(scratch.ToContiguousGPU(stream, host));
}

class NormalizeGpu : public dali::StatelessOperator<GPUBackend> {
 public:
  explicit NormalizeGpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), options_(NormalizeOptionsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    errors_.ThrowIfSet();
    CheckSparseInputs(ws, 0);
    out = {{ws.GetInputShape(0), ::DALI_FLOAT}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    auto rows = UploadRows(ws, false, scratch);
    auto out = OutputPointers<float>(ws, 0);
    gpu::Normalize(rows, options_, ToDevice(scratch, ws.stream(), out), errors_.Device(ws.stream()), ws.stream());
    errors_.Publish(ws.stream());
  }

 private:
  expression::NormalizeOptions options_;
  DeviceErrorFlags errors_;
};

// Output lengths depend on the indices, so they stay on the CPU: the selection is computed on
// the host (as the CPU operator does) and only the values are gathered on the GPU.
class SelectGenesGpu : public dali::StatelessOperator<GPUBackend> {
 public:
  explicit SelectGenesGpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), genes_(GeneColumnsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    CheckSparseInputs(ws, 1);
    const auto &indices = ws.Input<dali::CPUBackend>(1);
    int n = indices.num_samples();
    kept_.resize(n);
    dali::TensorListShape<1> shape(n);
    for (int s = 0; s < n; ++s) {
      try {
        expression::SelectRow(indices.tensor<int32_t>(s), indices.tensor_shape_span(s)[0], genes_,
                              &kept_[s], &slots_);
      } catch (const std::exception &e) {
        throw Error(StrCat("sample ", s, ": ", e.what()));
      }
      shape.set_tensor_shape(s, {static_cast<int64_t>(kept_[s].size())});
    }
    out = {{shape, ws.GetInputDataType(0)}, {shape, ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    auto rows = UploadRows(ws, false, scratch);
    int n = rows.num_rows;
    std::vector<int64_t> out_offsets(n + 1, 0);
    for (int s = 0; s < n; ++s) out_offsets[s + 1] = out_offsets[s] + static_cast<int64_t>(kept_[s].size());
    std::vector<int32_t> source(out_offsets[n]), positions(out_offsets[n]);
    for (int s = 0; s < n; ++s)
      for (size_t k = 0; k < kept_[s].size(); ++k) {
        positions[out_offsets[s] + k] = kept_[s][k].first;
        source[out_offsets[s] + k] = kept_[s][k].second;
      }
    auto out_values = OutputPointers<void>(ws, 0);
    auto out_indices = OutputPointers<int32_t>(ws, 1);
    auto [source_dev, positions_dev, offsets_dev, out_values_dev, out_indices_dev] =
        scratch.ToContiguousGPU(ws.stream(), source, positions, out_offsets, out_values, out_indices);
    gpu::GatherSelected(rows, source_dev, positions_dev, offsets_dev, out_values_dev, out_indices_dev,
                        ws.stream());
  }

 private:
  expression::GeneSelection genes_;
  std::vector<std::vector<std::pair<int32_t, int32_t>>> kept_;
  std::vector<int32_t> slots_;
};

// densify, and normalize_densify when `normalize` is set.
class DensifyGpu : public dali::StatelessOperator<GPUBackend> {
 public:
  explicit DensifyGpu(const dali::OpSpec &spec, bool normalize = false)
      : StatelessOperator(spec), config_(spec, normalize) {}
  ~DensifyGpu() override {
    if (gene_table_) cudaFree(gene_table_);
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    errors_.ThrowIfSet();
    CheckSparseInputs(ws, 1);
    out = {config_.Output(ws.GetInputShape(0).num_samples())};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    const auto *genes = config_.genes.get();
    if (genes && !gene_table_) {  // the column -> position table goes up once
      const auto &table = genes->table();
      CheckCuda(cudaMalloc(&gene_table_, table.size() * sizeof(int32_t)), "densify");
      CheckCuda(cudaMemcpyAsync(gene_table_, table.data(), table.size() * sizeof(int32_t),
                                cudaMemcpyHostToDevice, ws.stream()), "densify");
    }
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    auto rows = UploadRows(ws, true, scratch);
    auto out = OutputPointers<void>(ws, 0);
    gpu::Densify(rows, config_.n_features, gene_table_, genes ? static_cast<int64_t>(genes->table().size()) : 0,
                 config_.OutLength(), config_.type, config_.normalize ? &*config_.normalize : nullptr,
                 ToDevice(scratch, ws.stream(), out), errors_.Device(ws.stream()), ws.stream());
    errors_.Publish(ws.stream());
  }

 private:
  DensifyConfig config_;
  int32_t *gene_table_ = nullptr;
  DeviceErrorFlags errors_;
};

class NormalizeDensifyGpu final : public DensifyGpu {
 public:
  explicit NormalizeDensifyGpu(const dali::OpSpec &spec) : DensifyGpu(spec, true) {}
};

class DownsampleGpu : public DownsampleBase<GPUBackend> {
 public:
  explicit DownsampleGpu(const dali::OpSpec &spec) : DownsampleBase(spec) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    errors_.ThrowIfSet();
    return DownsampleBase::SetupImpl(out, ws);
  }
  void RunImpl(dali::Workspace &ws) override {
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    auto rows = UploadRows(ws, false, scratch);
    auto out = OutputPointers<void>(ws, 0);
    auto [fraction, target, out_dev] = scratch.ToContiguousGPU(ws.stream(), fraction_, target_total_, out);
    gpu::Downsample(rows, fraction, target, seed_, batch_counter_, stream_, out_dev, errors_.Device(ws.stream()),
                    ws.stream());
    errors_.Publish(ws.stream());
    ++batch_counter_;
  }

 private:
  DeviceErrorFlags errors_;
};

class MaskGpu : public MaskBase<GPUBackend> {
 public:
  explicit MaskGpu(const dali::OpSpec &spec) : MaskBase(spec) {}

 protected:
  void RunImpl(dali::Workspace &ws) override {
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    auto rows = UploadRows(ws, ws.NumInput() > 1, scratch);
    auto out = OutputPointers<void>(ws, 0);
    auto [probability, out_dev] = scratch.ToContiguousGPU(ws.stream(), probability_, out);
    gpu::Mask(rows, probability, seed_, batch_counter_, stream_, out_dev, ws.stream());
    ++batch_counter_;
  }
};

class RankTokensGpu : public dali::StatelessOperator<GPUBackend> {
 public:
  explicit RankTokensGpu(const dali::OpSpec &spec)
      : StatelessOperator(spec), medians_(GeneMediansFrom(spec)), options_(RankTokensOptionsFrom(spec)) {}
  ~RankTokensGpu() override {
    if (medians_dev_) cudaFree(medians_dev_);
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    errors_.ThrowIfSet();
    CheckSparseInputs(ws, 1);
    int n = ws.GetInputShape(0).num_samples();
    out = {{dali::uniform_list_shape(n, {options_.max_length}), ::DALI_INT32},
           {dali::uniform_list_shape(n, dali::TensorShape<>{}), ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    if (!medians_dev_) {
      CheckCuda(cudaMalloc(&medians_dev_, medians_.size() * sizeof(float)), "rank_tokens");
      CheckCuda(cudaMemcpyAsync(medians_dev_, medians_.data(), medians_.size() * sizeof(float),
                                cudaMemcpyHostToDevice, ws.stream()), "rank_tokens");
    }
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    ScratchAdapter adapter(scratch);
    auto rows = UploadRows(ws, true, scratch);
    auto tokens = OutputPointers<int32_t>(ws, 0);
    auto lengths = OutputPointers<int32_t>(ws, 1);
    auto [tokens_dev, lengths_dev] = scratch.ToContiguousGPU(ws.stream(), tokens, lengths);
    gpu::RankTokens(rows, medians_dev_, static_cast<int64_t>(medians_.size()), options_, tokens_dev, lengths_dev,
                    errors_.Device(ws.stream()), adapter, ws.stream());
    errors_.Publish(ws.stream());
  }

 private:
  std::vector<float> medians_;
  float *medians_dev_ = nullptr;
  expression::RankTokensOptions options_;
  DeviceErrorFlags errors_;
};

class BinValuesGpu : public dali::StatelessOperator<GPUBackend> {
 public:
  explicit BinValuesGpu(const dali::OpSpec &spec) : StatelessOperator(spec), n_bins_(NumBinsFrom(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    errors_.ThrowIfSet();
    CheckSparseInputs(ws, 0);
    out = {{ws.GetInputShape(0), ::DALI_INT32}};
    return true;
  }
  void RunImpl(dali::Workspace &ws) override {
    dali::kernels::DynamicScratchpad scratch(ws.stream());
    ScratchAdapter adapter(scratch);
    auto rows = UploadRows(ws, false, scratch);
    auto out = OutputPointers<int32_t>(ws, 0);
    gpu::BinValues(rows, n_bins_, ToDevice(scratch, ws.stream(), out), errors_.Device(ws.stream()), adapter,
                   ws.stream());
    errors_.Publish(ws.stream());
  }

 private:
  int n_bins_;
  DeviceErrorFlags errors_;
};

}  // namespace
}  // namespace biodali::plugin

DALI_REGISTER_OPERATOR(biodali__expression__Normalize, biodali::plugin::NormalizeGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__SelectGenes, biodali::plugin::SelectGenesGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__Densify, biodali::plugin::DensifyGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__NormalizeDensify, biodali::plugin::NormalizeDensifyGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__Downsample, biodali::plugin::DownsampleGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__Mask, biodali::plugin::MaskGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__RankTokens, biodali::plugin::RankTokensGpu, dali::GPU);
DALI_REGISTER_OPERATOR(biodali__expression__BinValues, biodali::plugin::BinValuesGpu, dali::GPU);
