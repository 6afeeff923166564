// DALI glue shared by every biodali reader: a DataReader whose Loader pulls rows from a
// biodali::RowStream (sampler + I/O engine in csrc/). A batch of consecutive rows of one
// window (the usual case) is output without a copy: each output shares the window's memory,
// which stays alive until DALI and the user drop the output. The batch that ends a window is
// copied instead, so that the window goes back to the stream as soon as its rows are out, not
// when the user drops that batch (which would keep a third window alive, loading the next
// while the user holds the last one); so are batches across windows or padded. A reader for a
// new data kind only builds its RowSource and declares its schema.
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

// A sample is a stream position when the Loader reads it, and gets its row (window and
// slot) when its batch is complete: the Loader reads one sample ahead, and resolving that one
// at once would hold the batch back until the next window is loaded.
struct RowSample {
  RowPosition position;
  RowRef ref;  // set once the sample's batch is prefetched
};

// DALI's Loader does sharding, padding, epoch accounting and checkpoint snapshots; the order
// of rows and all I/O are the RowStream's. The stream follows the Loader's shard rotation
// (same shard sizes), so the position the Loader counts is the position in the stream.
class RowStreamLoader : public dali::Loader<dali::CPUBackend, RowSample, true> {
 public:
  RowStreamLoader(const dali::OpSpec &spec, std::shared_ptr<RowStream> stream);
  void PrepareEmpty(RowSample &) override {}  // no per-sample pre-allocation: rows are views
  void ReadSample(RowSample &sample) override {
    sample.position = stream_->NextPosition();
    sample.ref = {};
  }
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
  void RunImpl(dali::Workspace &ws) override;
  // Both ways of filling outputs leave each one contiguous.
  bool HasContiguousOutputs() const override { return true; }

 private:
  static void ReleaseWindows(std::vector<std::shared_ptr<RowSample>> &batch);
  // True when the batch is consecutive slots of one window that are not its last.
  bool SharesWindow() const;
  // The batch's rows copied into a window of their own (from batch_pool_), in batch order.
  std::shared_ptr<const Window> GatherRows(dali::Workspace &ws);
  // Points every output at rows [first_slot, first_slot + batch size) of `window`.
  void ShareWindow(dali::Workspace &ws, const std::shared_ptr<const Window> &window, int64_t first_slot);

  std::shared_ptr<RowStream> stream_;
  std::vector<FieldSpec> fields_;
  std::vector<DType> output_dtypes_;  // per field (after the optional cast), as windows hold them
  // Buffers of copied batches, reused once DALI and the user release them (as many as are
  // held at once: about one).
  std::shared_ptr<WindowPool> batch_pool_;
  bool return_row_index_ = false;
};

StreamOptions StreamOptionsFromSpec(const dali::OpSpec &spec);

}  // namespace biodali::plugin
