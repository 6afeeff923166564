#include "dali_plugin/row_stream_reader.h"

#include <algorithm>
#include <limits>
#include <string>
#include <unordered_map>

#include "common/error.h"
#include "dali_plugin/dtypes.h"

namespace biodali::plugin {
namespace {

// The Loader's own `random_shuffle` is a shuffle *buffer*; biodali shuffles in its sampler.
dali::OpSpec WithoutLoaderShuffle(const dali::OpSpec &spec) {
  dali::OpSpec copy = spec;
  copy.SetArg("random_shuffle", false);
  return copy;
}

// The reader's output type per field: what the source outputs by default, `dtype` for the
// matrix values. Windows hold the fields in these types, so outputs can share them.
std::vector<DType> OutputDtypes(const dali::OpSpec &spec, const RowSource &source) {
  std::vector<DType> dtypes;
  for (const auto &f : source.fields()) dtypes.push_back(f.output_dtype);
  dali::DALIDataType cast;
  if (spec.TryGetArgument(cast, "dtype") && cast != ::DALI_NO_TYPE) dtypes[0] = FromDali(cast);
  return dtypes;
}

std::shared_ptr<RowStream> MakeStream(const dali::OpSpec &spec, std::shared_ptr<const RowSource> source) {
  StreamOptions options = StreamOptionsFromSpec(spec);
  options.field_dtypes = OutputDtypes(spec, *source);
  return std::make_shared<RowStream>(std::move(source), std::move(options));
}

}  // namespace

RowStreamLoader::RowStreamLoader(const dali::OpSpec &spec, std::shared_ptr<RowStream> stream)
    : Loader(WithoutLoaderShuffle(spec)), stream_(std::move(stream)) {}

StreamOptions StreamOptionsFromSpec(const dali::OpSpec &spec) {
  StreamOptions options;
  options.sampler.block_rows = spec.GetArgument<int>("chunk_size");
  options.sampler.window_blocks = spec.GetArgument<int>("preload_chunks");
  options.sampler.shuffle = spec.GetArgument<bool>("random_shuffle");
  options.sampler.seed = static_cast<uint64_t>(spec.GetArgument<int64_t>("seed"));
  options.shard.num_shards = spec.GetArgument<int>("num_shards");
  options.shard.shard_id = spec.GetArgument<int>("shard_id");
  options.shard.stick_to_shard = spec.GetArgument<bool>("stick_to_shard");
  options.num_io_threads = spec.GetArgument<int>("num_io_threads");
  options.prefetch_windows = spec.GetArgument<int>("prefetch_windows");
  options.batch_size = spec.GetArgument<int>("max_batch_size");
  options.io.depth = spec.GetArgument<int>("io_depth");
  const int64_t in_flight_mib = spec.GetArgument<int64_t>("io_max_in_flight_mb");
  DALI_ENFORCE(options.io.depth > 0, "io_depth must be positive");
  DALI_ENFORCE(in_flight_mib > 0, "io_max_in_flight_mb must be positive");
  options.io.max_in_flight_nbytes = static_cast<uint64_t>(in_flight_mib) << 20;
  DALI_ENFORCE(options.sampler.block_rows > 0, "chunk_size must be positive");
  DALI_ENFORCE(options.sampler.window_blocks > 0, "preload_chunks must be positive");
  return options;
}

RowStreamReader::RowStreamReader(const dali::OpSpec &spec, std::shared_ptr<const RowSource> source)
    : DataReader(spec),
      stream_(MakeStream(spec, std::move(source))),
      fields_(stream_->source().fields()),
      output_dtypes_(stream_->options().field_dtypes),
      batch_pool_(std::make_shared<WindowPool>(std::numeric_limits<int>::max())),
      return_row_index_(spec.GetArgument<bool>("return_row_index")) {
  loader_ = dali::InitLoader<RowStreamLoader>(spec, stream_);
  this->SetInitialSnapshot();
}

void RowStreamReader::ReleaseWindows(std::vector<std::shared_ptr<RowSample>> &batch) {
  // A sample object referenced only by this batch (possibly several times: padding repeats the
  // last sample) can drop its window. One shared elsewhere (the Loader keeps its last sample
  // for padding; a padded batch may span two slots) keeps it until its last holder is here.
  std::unordered_map<const RowSample *, long> occurrences;
  for (const auto &sample : batch)
    if (sample) ++occurrences[sample.get()];
  for (auto &sample : batch)
    if (sample && sample->ref.window && sample.use_count() == occurrences[sample.get()])
      sample->ref.window.reset();
}

void RowStreamReader::Prefetch() {
  // Samples of the slot about to be refilled go back to the Loader's pool: make sure they do
  // not carry window references there.
  auto &batch = prefetched_batch_queue_[curr_batch_producer_];
  ReleaseWindows(batch);
  DataReader::Prefetch();
  for (auto &sample : batch)  // a padded batch repeats its last sample: resolved once
    if (!sample->ref.window) sample->ref = stream_->Resolve(sample->position);
}

bool RowStreamReader::SharesWindow() const {
  const auto &batch = GetCurrBatch();
  const RowRef &first = batch.front()->ref;
  const int64_t batch_size = static_cast<int64_t>(batch.size());
  if (first.slot + batch_size >= first.window->num_slots()) return false;
  for (int64_t i = 1; i < batch_size; ++i) {
    const RowRef &ref = batch[i]->ref;
    if (ref.window != first.window || ref.slot != first.slot + i) return false;
  }
  return true;
}

std::shared_ptr<const Window> RowStreamReader::GatherRows(dali::Workspace &ws) {
  const auto &batch = GetCurrBatch();
  const int batch_size = static_cast<int>(batch.size());
  std::shared_ptr<Window> out = batch_pool_->Acquire([] { return false; }, [] { return true; });
  out->rows.resize(batch_size);
  out->fields.resize(fields_.size());
  for (size_t f = 0; f < fields_.size(); ++f) {
    FieldData &field = out->fields[f];
    field.dtype = output_dtypes_[f];
    int64_t elements = int64_t{batch_size} * fields_[f].RowElements();
    if (fields_[f].ragged) {
      field.offsets.resize(batch_size + 1);
      field.offsets[0] = 0;
      for (int i = 0; i < batch_size; ++i) {
        const RowRef &ref = batch[i]->ref;
        const auto &offsets = ref.window->fields[f].offsets;
        field.offsets[i + 1] = field.offsets[i] + offsets[ref.slot + 1] - offsets[ref.slot];
      }
      elements = field.offsets.back();
    }
    field.data.Resize(elements * DTypeSize(field.dtype));
  }
  auto &pool = ws.GetThreadPool();
  // A task per range of samples: enough tasks to balance, few enough to keep overhead low.
  const int num_tasks = std::min(batch_size, pool.NumThreads() * 8);
  for (int task = 0; task < num_tasks; ++task) {
    int begin = static_cast<int>(int64_t{batch_size} * task / num_tasks);
    int end = static_cast<int>(int64_t{batch_size} * (task + 1) / num_tasks);
    pool.AddWork([&, begin, end](int) {
      for (int i = begin; i < end; ++i) {
        const RowRef &ref = batch[i]->ref;
        out->rows[i] = ref.row;
        for (size_t f = 0; f < fields_.size(); ++f) {
          const FieldData &src = ref.window->fields[f];
          FieldData &dst = out->fields[f];
          const int64_t src_first = SlotElement(fields_[f], src, ref.slot);
          const int64_t count = SlotElement(fields_[f], src, ref.slot + 1) - src_first;
          const int64_t dst_first = SlotElement(fields_[f], dst, i);
          const size_t item = DTypeSize(src.dtype);
          StreamElements(src.data.data() + src_first * item, src.dtype, dst.data.data() + dst_first * item,
                         dst.dtype, count);
        }
      }
      StreamFence();
    }, end - begin);
  }
  pool.RunAll();
  return out;
}

void RowStreamReader::ShareWindow(dali::Workspace &ws, const std::shared_ptr<const Window> &window,
                                  int64_t first_slot) {
  const int batch_size = GetCurrBatchSize();
  // Each output aliases the window: the window returns to its pool when the last output
  // sharing it is released.
  // (Element counts come from the window: DALI's num_elements() indexes an empty vector for
  // shapes of scalars.)
  auto share = [&](int output, const std::byte *data, int64_t num_elements, const dali::TensorListShape<> &shape,
                   DType dtype) {
    auto &out = ws.Output<dali::CPUBackend>(output);
    std::shared_ptr<void> memory(window, const_cast<std::byte *>(data));
    out.ShareData(std::move(memory), num_elements * DTypeSize(dtype), /*pinned=*/false, shape, ToDali(dtype),
                  out.device_id(), dali::AccessOrder::host());
  };
  for (size_t f = 0; f < fields_.size(); ++f) {
    const FieldData &data = window->fields[f];
    dali::TensorListShape<> shape;
    if (fields_[f].ragged) {
      shape.resize(batch_size, 1);
      for (int i = 0; i < batch_size; ++i)
        shape.tensor_shape_span(i)[0] = data.offsets[first_slot + i + 1] - data.offsets[first_slot + i];
    } else {
      dali::TensorShape<> row_shape;
      row_shape.resize(static_cast<int>(fields_[f].row_shape.size()));
      for (size_t d = 0; d < fields_[f].row_shape.size(); ++d) row_shape[d] = fields_[f].row_shape[d];
      shape = dali::uniform_list_shape(batch_size, row_shape);
    }
    const int64_t first_element = SlotElement(fields_[f], data, first_slot);
    const int64_t num_elements = SlotElement(fields_[f], data, first_slot + batch_size) - first_element;
    share(static_cast<int>(f), data.data.data() + first_element * DTypeSize(data.dtype), num_elements, shape,
          data.dtype);
  }
  if (return_row_index_) {
    share(static_cast<int>(fields_.size()), reinterpret_cast<const std::byte *>(window->rows.data() + first_slot),
          batch_size, dali::uniform_list_shape(batch_size, dali::TensorShape<>{}), DType::kInt64);
  }
}

void RowStreamReader::RunImpl(dali::Workspace &ws) {
  if (SharesWindow()) {
    const RowRef &first = GetCurrBatch().front()->ref;
    ShareWindow(ws, first.window, first.slot);
  } else {
    ShareWindow(ws, GatherRows(ws), 0);
  }
  // The samples' references are no longer needed (outputs hold their own): release them now,
  // since the stream cannot load the next window while 1 + prefetch_windows are referenced.
  ReleaseWindows(GetCurrBatch());
}

}  // namespace biodali::plugin

// Arguments every biodali reader shares (a schema without an operator, used as a parent).
DALI_SCHEMA(biodali_RowStreamReaderBase)
    .DocStr("Common arguments of biodali readers.")
    .AddOptionalArg("chunk_size", R"(Rows per shuffled block (annbatch's ``chunk_size``): rows
of a block stay contiguous on disk, so larger blocks read faster and shuffle coarser.)", 512)
    .AddOptionalArg("preload_chunks", R"(Blocks gathered into one window (annbatch's
``preload_nchunks``); rows are shuffled within a window. Window = chunk_size x preload_chunks rows,
the unit of I/O and of memory.)", 32)
    .AddOptionalArg("num_io_threads", R"(Decode threads of this reader (0: one per core). Reads
run on ``io_depth`` threads of their own, which only wait for the storage.)", 0)
    .AddOptionalArg("io_depth", R"(Read requests in flight at once (each on an I/O thread of
its own that only waits for the storage). The reader submits every byte range a window needs
(neighbouring ranges joined into requests of up to 8 MiB) before the window ahead of it is
decoded, so the storage is kept busy while the decode threads work; deeper helps storage with a
high latency per request (network filesystems), a local SSD is busy at 4-16.)", 16)
    .AddOptionalArg("io_max_in_flight_mb", R"(Cap on the bytes read ahead and not yet decoded,
in MiB (a request someone is waiting for starts regardless). For local files these are page
cache pages made resident ahead of the decoders, not buffers of the reader.)", int64_t{256})
    .AddOptionalArg("prefetch_windows", R"(Windows loaded ahead of the one being consumed. Outputs
share the windows' memory (no copy) except the batch that ends a window, which is copied so the
window can be reused at once. Memory held by the reader: (1 + prefetch_windows) windows plus
the copied batches still held (usually one), and at an epoch's end the window of the rows left
over when it is smaller than a batch; a window is kept longer, and one more loaded, while
outputs inside it are held.)", 1)
    .AddOptionalArg("return_row_index", R"(Add a last output: the int64 0-based row position in
the concatenation of all inputs.)", false)
    .AddOptionalTypeArg("dtype", "Cast the matrix values (sparse values or dense rows) to this type.")
    .AddParent("LoaderBase");
