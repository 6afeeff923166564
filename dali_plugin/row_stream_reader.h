// DALI glue shared by every biodali reader: a DataReader whose Loader pulls rows from a
// biodali::RowStream (sampler + I/O engine in csrc/), and copies them into outputs.
// A reader for a new data kind only builds its RowSource and declares its schema.
#pragma once

#include <memory>
#include <vector>

// GCC 12 reports false -Wfree-nonheap-object warnings inside DALI's SmallVector-based headers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wfree-nonheap-object"
#include "dali/operators/reader/reader_op.h"
#pragma GCC diagnostic pop
#include "engine/row_stream.h"

namespace biodali::plugin {

struct RowSample {
  RowRef ref;
};

// DALI's Loader does sharding, padding, epoch accounting and checkpoint snapshots; the order
// of rows and all I/O are the RowStream's. The stream follows the Loader's shard rotation
// (same shard sizes), so the position the Loader counts is the position in the stream.
class RowStreamLoader : public dali::Loader<dali::CPUBackend, RowSample, true> {
 public:
  RowStreamLoader(const dali::OpSpec &spec, std::shared_ptr<RowStream> stream);
  void PrepareEmpty(RowSample &) override {}  // no per-sample pre-allocation: rows are views
  void ReadSample(RowSample &sample) override { sample.ref = stream_->Next(); }
  void Skip() override { stream_->Skip(); }

 protected:
  dali::Index SizeImpl() override { return stream_->source().num_rows(); }
  // DALI calls Reset only when restoring a checkpoint (RestoreEpochState), always to the start
  // of the snapshot's epoch; the stream crosses shard and epoch ends by itself.
  void Reset(bool) override { stream_->Seek(restored_epoch_, 0); }
  void RestoreStateImpl(const dali::LoaderStateSnapshot &state) override {
    restored_epoch_ = state.current_epoch;
  }

 private:
  std::shared_ptr<RowStream> stream_;
  int64_t restored_epoch_ = 0;
};

class RowStreamReader : public dali::DataReader<dali::CPUBackend, RowSample, RowSample, true> {
 public:
  RowStreamReader(const dali::OpSpec &spec, std::shared_ptr<const RowSource> source);

 protected:
  void Prefetch() override;
  bool SetupImpl(std::vector<dali::OutputDesc> &output_desc, const dali::Workspace &ws) override;
  void RunImpl(dali::Workspace &ws) override;

 private:
  static void ReleaseWindows(std::vector<std::shared_ptr<RowSample>> &batch);
  std::shared_ptr<RowStream> stream_;
  std::vector<FieldSpec> fields_;
  std::vector<DType> output_dtypes_;  // per field (after the optional cast)
  bool return_row_index_ = false;
};

StreamOptions StreamOptionsFromSpec(const dali::OpSpec &spec);

}  // namespace biodali::plugin
