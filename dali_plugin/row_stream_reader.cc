#include "dali_plugin/row_stream_reader.h"

#include <algorithm>
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
  DALI_ENFORCE(options.sampler.block_rows > 0, "chunk_size must be positive");
  DALI_ENFORCE(options.sampler.window_blocks > 0, "preload_chunks must be positive");
  return options;
}

RowStreamReader::RowStreamReader(const dali::OpSpec &spec, std::shared_ptr<const RowSource> source)
    : DataReader(spec),
      stream_(std::make_shared<RowStream>(std::move(source), StreamOptionsFromSpec(spec))),
      fields_(stream_->source().fields()),
      return_row_index_(spec.GetArgument<bool>("return_row_index")) {
  for (const auto &f : fields_) output_dtypes_.push_back(f.output_dtype);
  dali::DALIDataType cast;
  if (spec.TryGetArgument(cast, "dtype") && cast != ::DALI_NO_TYPE) output_dtypes_[0] = FromDali(cast);
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
  ReleaseWindows(prefetched_batch_queue_[curr_batch_producer_]);
  DataReader::Prefetch();
}

bool RowStreamReader::SetupImpl(std::vector<dali::OutputDesc> &output_desc, const dali::Workspace &ws) {
  DataReader::SetupImpl(output_desc, ws);
  const auto &batch = GetCurrBatch();
  const int batch_size = static_cast<int>(batch.size());
  const int num_outputs = static_cast<int>(fields_.size()) + (return_row_index_ ? 1 : 0);
  output_desc.resize(num_outputs);
  for (size_t f = 0; f < fields_.size(); ++f) {
    const FieldSpec &field = fields_[f];
    dali::TensorListShape<> shape;
    if (field.ragged) {
      shape.resize(batch_size, 1);
      for (int i = 0; i < batch_size; ++i) {
        const RowRef &ref = batch[i]->ref;
        const auto &offsets = ref.window->fields[f].offsets;
        shape.tensor_shape_span(i)[0] = offsets[ref.slot + 1] - offsets[ref.slot];
      }
    } else {
      dali::TensorShape<> row_shape;
      row_shape.resize(static_cast<int>(field.row_shape.size()));
      for (size_t d = 0; d < field.row_shape.size(); ++d) row_shape[d] = field.row_shape[d];
      shape = dali::uniform_list_shape(batch_size, row_shape);
    }
    output_desc[f] = {shape, ToDali(output_dtypes_[f])};
  }
  if (return_row_index_)
    output_desc.back() = {dali::uniform_list_shape(batch_size, dali::TensorShape<>{}), ::DALI_INT64};
  return true;
}

void RowStreamReader::RunImpl(dali::Workspace &ws) {
  const auto &batch = GetCurrBatch();
  const int batch_size = static_cast<int>(batch.size());
  auto &pool = ws.GetThreadPool();
  // A task per range of samples: enough tasks to balance, few enough to keep overhead low.
  const int num_tasks = std::min(batch_size, pool.NumThreads() * 8);
  for (int task = 0; task < num_tasks; ++task) {
    int begin = static_cast<int>(int64_t{batch_size} * task / num_tasks);
    int end = static_cast<int>(int64_t{batch_size} * (task + 1) / num_tasks);
    pool.AddWork([&, begin, end](int) {
      for (int i = begin; i < end; ++i) {
        const RowRef &ref = batch[i]->ref;
        for (size_t f = 0; f < fields_.size(); ++f) {
          const FieldSpec &field = fields_[f];
          const FieldData &data = ref.window->fields[f];
          int64_t first, count;
          if (field.ragged) {
            first = data.offsets[ref.slot];
            count = data.offsets[ref.slot + 1] - first;
          } else {
            count = field.RowElements();
            first = ref.slot * count;
          }
          auto &out = ws.Output<dali::CPUBackend>(static_cast<int>(f));
          StreamElements(data.data.data() + first * DTypeSize(field.dtype), field.dtype,
                         out.raw_mutable_tensor(i), output_dtypes_[f], count);
        }
        if (return_row_index_) {
          auto &out = ws.Output<dali::CPUBackend>(static_cast<int>(fields_.size()));
          *static_cast<int64_t *>(out.raw_mutable_tensor(i)) = ref.row;
        }
      }
    }, end - begin);
  }
  pool.RunAll();
  // The rows are copied out: release their windows now, since the stream cannot load the next
  // window while 1 + prefetch_windows are referenced.
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
    .AddOptionalArg("num_io_threads", "I/O and decode threads of this reader (0: one per core).", 0)
    .AddOptionalArg("prefetch_windows", R"(Windows loaded ahead of the one being consumed. Memory
held by the reader is about (1 + prefetch_windows) windows plus the rows of the batches in
DALI's prefetch queue.)", 1)
    .AddOptionalArg("return_row_index", R"(Add a last output: the int64 0-based row position in
the concatenation of all inputs.)", false)
    .AddOptionalTypeArg("dtype", "Cast the matrix values (sparse values or dense rows) to this type.")
    .AddParent("LoaderBase");
