#include "anndata/anndata_source.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <unordered_map>

#include "common/error.h"
#include "zarr/node.h"

namespace biodali::anndata {
namespace {

// Re-codes a categorical column so its codes index into `union_categories` (extended with the
// column's categories not yet in it, in their order). -1 (missing) stays -1.
void RecodeInto(ObsColumn &column, std::vector<std::string> &union_categories, const std::string &path) {
  std::vector<int32_t> recode(column.categories.size());
  bool identity = true;
  for (size_t k = 0; k < column.categories.size(); ++k) {
    auto it = std::find(union_categories.begin(), union_categories.end(), column.categories[k]);
    if (it == union_categories.end()) it = union_categories.insert(union_categories.end(), column.categories[k]);
    recode[k] = static_cast<int32_t>(it - union_categories.begin());
    identity &= recode[k] == static_cast<int32_t>(k);
  }
  int32_t *codes = reinterpret_cast<int32_t *>(column.values.data());
  const int64_t n = static_cast<int64_t>(column.values.nbytes() / sizeof(int32_t));
  const int64_t num_categories = static_cast<int64_t>(recode.size());
  for (int64_t i = 0; i < n; ++i) {
    if (codes[i] < -1 || codes[i] >= num_categories)
      FailAt(zarr::JoinPath(path, "obs/" + column.name + "/codes"), "code ", codes[i], " at row ", i,
             " is out of range for ", num_categories, " categories");
    if (!identity && codes[i] >= 0) codes[i] = recode[codes[i]];
  }
}

// Min and max of a run of indices; built for AVX2 too (unsigned 16-bit min/max needs SSE4.1,
// which the baseline x86-64 target lacks) and picked at run time.
template <typename T>
__attribute__((target_clones("avx2", "default")))
void IndexRange(const T *indices, int64_t n, T *lo_out, T *hi_out) {
  T lo = std::numeric_limits<T>::max(), hi = std::numeric_limits<T>::lowest();
  for (int64_t i = 0; i < n; ++i) {
    lo = indices[i] < lo ? indices[i] : lo;
    hi = indices[i] > hi ? indices[i] : hi;
  }
  *lo_out = lo;
  *hi_out = hi;
}

template <typename T>
void CheckIndices(const T *indices, int64_t n, int64_t num_cols, const zarr::Array &array,
                  int64_t first_element) {
  if (n == 0) return;
  T lo, hi;
  IndexRange(indices, n, &lo, &hi);
  auto in_range = [num_cols](T v) {
    if constexpr (std::is_signed_v<T>) return v >= 0 && static_cast<int64_t>(v) < num_cols;
    else return static_cast<uint64_t>(v) < static_cast<uint64_t>(num_cols);
  };
  if (in_range(lo) && in_range(hi)) return;
  for (int64_t i = 0; i < n; ++i) {  // find the culprit only on failure
    if (!in_range(indices[i]))
      FailAt(array.path(), "column index ", +indices[i], " at element ", first_element + i,
             " is out of range for ", num_cols, " columns");
  }
}

void CheckIndicesAny(const std::byte *p, DType dtype, int64_t n, int64_t num_cols,
                     const zarr::Array &array, int64_t first_element) {
  switch (dtype) {
    case DType::kUInt8: CheckIndices(reinterpret_cast<const uint8_t *>(p), n, num_cols, array, first_element); break;
    case DType::kUInt16: CheckIndices(reinterpret_cast<const uint16_t *>(p), n, num_cols, array, first_element); break;
    case DType::kUInt32: CheckIndices(reinterpret_cast<const uint32_t *>(p), n, num_cols, array, first_element); break;
    case DType::kUInt64: CheckIndices(reinterpret_cast<const uint64_t *>(p), n, num_cols, array, first_element); break;
    case DType::kInt8: CheckIndices(reinterpret_cast<const int8_t *>(p), n, num_cols, array, first_element); break;
    case DType::kInt16: CheckIndices(reinterpret_cast<const int16_t *>(p), n, num_cols, array, first_element); break;
    case DType::kInt32: CheckIndices(reinterpret_cast<const int32_t *>(p), n, num_cols, array, first_element); break;
    case DType::kInt64: CheckIndices(reinterpret_cast<const int64_t *>(p), n, num_cols, array, first_element); break;
    default: FailAt(array.path(), "unsupported index dtype ", DTypeName(dtype));
  }
}

// One chunk of one stored 1-D array and the pieces of it a window needs: each piece is one
// row's elements within the chunk (a row crossing a chunk boundary has a piece in each),
// bound for that row's slot.
struct Piece {
  int64_t chunk_offset;  // first element within the chunk
  int64_t num_elements;
  int64_t dst_element;  // first element in the window's field
};
struct ChunkTask {
  const zarr::Array *array;
  int field;  // 0: values, 1: indices
  int64_t num_cols;
  int64_t chunk;
  std::vector<Piece> pieces;  // ascending chunk_offset; a row's pieces follow its predecessor's
};

// Calls f(begin, end) for each maximal run of adjacent pieces (consecutive rows).
template <typename F>
void ForEachSpan(const std::vector<Piece> &pieces, F &&f) {
  for (size_t i = 0; i < pieces.size();) {
    int64_t begin = pieces[i].chunk_offset, end = begin + pieces[i].num_elements;
    for (++i; i < pieces.size() && pieces[i].chunk_offset == end; ++i) end += pieces[i].num_elements;
    f(begin, end);
  }
}

// Dense rows are read a run at a time into scratch and scattered to their slots; runs longer
// than this are split (only rows bigger than this are read one by one).
constexpr size_t kDenseScratchNbytes = size_t{32} << 20;

}  // namespace

AnnDataSource::AnnDataSource(const AnnDataSourceOptions &options) {
  if (options.paths.empty()) throw Error("anndata reader: `path` is empty");
  for (const auto &path : ExpandStorePaths(options.paths))
    groups_.push_back(OpenAnnDataGroup(path, options.element, options.obs_columns));
  const AnnDataGroup &first = groups_.front();
  row_starts_.push_back(0);
  for (const auto &g : groups_) {
    if (g.kind != first.kind)
      FailAt(g.element_path, "is ", g.kind == MatrixKind::kCsr ? "sparse" : "dense", " but ",
             first.element_path, " is not; all stores must store the element the same way");
    if (g.row_shape != first.row_shape)
      FailAt(g.element_path, "has ", g.row_shape.empty() ? 0 : g.row_shape.back(),
             " columns (row shape of ", g.row_shape.size(), " dims) but ", first.element_path,
             " has ", first.row_shape.empty() ? 0 : first.row_shape.back(), "; all stores must agree");
    if (g.kind == MatrixKind::kCsr && g.data->metadata().dtype != first.data->metadata().dtype)
      FailAt(g.data->path(), "stores ", DTypeName(g.data->metadata().dtype), " but ", first.data->path(),
             " stores ", DTypeName(first.data->metadata().dtype));
    if (g.kind == MatrixKind::kDense && g.dense->metadata().dtype != first.dense->metadata().dtype)
      FailAt(g.dense->path(), "stores ", DTypeName(g.dense->metadata().dtype), " but ",
             first.dense->path(), " stores ", DTypeName(first.dense->metadata().dtype));
    for (size_t c = 0; c < g.obs.size(); ++c) {
      const ObsColumn &col = g.obs[c], &ref = first.obs[c];
      if (col.categorical != ref.categorical || col.dtype != ref.dtype)
        FailAt(g.path, "obs column '", col.name, "' has another type than in ", first.path);
    }
    row_starts_.push_back(row_starts_.back() + g.num_rows);
  }
  // Codes of a categorical column index into the union of all stores' categories (first
  // appearance order), so that a code means one label whichever store the row came from.
  for (size_t c = 0; c < first.obs.size(); ++c) {
    if (!first.obs[c].categorical) continue;
    std::vector<std::string> union_categories;
    for (auto &g : groups_) RecodeInto(g.obs[c], union_categories, g.path);
  }
  if (first.kind == MatrixKind::kCsr) {
    DType data_dtype = first.data->metadata().dtype;
    // Indices stay in their stored type (converted to int32 while copying out) when all stores
    // agree on it; mixed types are unified to int32 at load.
    DType index_dtype = first.indices->metadata().dtype;
    for (const auto &g : groups_)
      if (g.indices->metadata().dtype != index_dtype) index_dtype = DType::kInt32;
    fields_.push_back({"values", data_dtype, true, {}, data_dtype});
    fields_.push_back({"indices", index_dtype, true, {}, DType::kInt32});
  } else {
    DType dtype = first.dense->metadata().dtype;
    fields_.push_back({"row", dtype, false, first.row_shape, dtype});
  }
  num_matrix_fields_ = static_cast<int>(fields_.size());
  for (const auto &col : first.obs) fields_.push_back({col.name, col.dtype, false, {}, col.dtype});
}

AnnDataSource::RowPlan AnnDataSource::PlanRows(const std::vector<int64_t> &rows) const {
  RowPlan plan;
  plan.slots.resize(rows.size());
  std::iota(plan.slots.begin(), plan.slots.end(), int64_t{0});
  std::sort(plan.slots.begin(), plan.slots.end(), [&](int64_t a, int64_t b) { return rows[a] < rows[b]; });
  int group = 0;
  for (size_t i = 0; i < plan.slots.size(); ++i) {
    int64_t row = rows[plan.slots[i]];
    while (row >= row_starts_[group + 1]) ++group;
    int64_t local = row - row_starts_[group];
    if (!plan.runs.empty() && plan.runs.back().group == group && plan.runs.back().row_end == local) {
      ++plan.runs.back().row_end;
    } else {
      plan.runs.push_back({group, local, local + 1, static_cast<int64_t>(i)});
    }
  }
  return plan;
}

// Dense rows: pieces of runs, each within one band of chunk rows (so a piece decodes each
// chunk once) and within the scratch bound.
struct DensePiece {
  int group;
  int64_t row_begin, row_end, first;
  std::vector<size_t> reads;  // the ranges of the chunks it decodes
};

struct AnnDataSource::Prepared final : PreparedLoad {
  RowPlan plan;
  std::vector<int64_t> offsets;             // CSR: element offset of each slot, + total
  std::vector<ChunkTask> tasks;             // CSR: one per (array, chunk)
  std::vector<zarr::StoredChunk> chunks;    // CSR: per task; range.nbytes == 0 when missing
  std::vector<bool> found;                  // CSR: per task
  std::vector<bool> partial;                // CSR: per task, decode only the spans it needs
  std::vector<DensePiece> dense_pieces;
  std::unique_ptr<io::FetchBatch> reads;
};

std::unique_ptr<PreparedLoad> AnnDataSource::Prepare(io::IoScheduler &io,
                                                     const std::vector<int64_t> &rows) const {
  auto prepared = std::make_unique<Prepared>();
  prepared->plan = PlanRows(rows);
  if (kind() == MatrixKind::kCsr) {
    PrepareCsr(io, *prepared);
  } else {
    PrepareDense(io, *prepared);
  }
  return prepared;
}

void AnnDataSource::Load(ThreadPool &pool, PreparedLoad &prepared_load, Window &window) const {
  auto &prepared = static_cast<Prepared &>(prepared_load);
  if (kind() == MatrixKind::kCsr) {
    LoadCsr(window, prepared, pool);
  } else {
    LoadDense(window, prepared, pool);
  }
  LoadObs(window, prepared.plan);
}

void AnnDataSource::PrepareCsr(io::IoScheduler &io, Prepared &prepared) const {
  const RowPlan &plan = prepared.plan;
  std::vector<int64_t> &offsets = prepared.offsets;
  offsets.assign(plan.slots.size() + 1, 0);
  for (const Run &run : plan.runs) {
    const auto &indptr = groups_[run.group].indptr;
    for (int64_t r = run.row_begin; r < run.row_end; ++r)
      offsets[plan.SlotOf(run, r) + 1] = indptr[r + 1] - indptr[r];
  }
  std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());

  // For each (array, chunk) the pieces the rows need. Runs are in row order, so the chunks of
  // one array come in ascending order and the pieces of one chunk are adjacent.
  std::vector<ChunkTask> &tasks = prepared.tasks;
  std::unordered_map<const zarr::Array *, size_t> last_task;  // chunks of one array ascend
  for (const Run &run : plan.runs) {
    const AnnDataGroup &g = groups_[run.group];
    for (int field = 0; field < 2; ++field) {
      const zarr::Array *array = field == 0 ? g.data.get() : g.indices.get();
      const int64_t chunk_elements = array->metadata().read_chunk_shape[0];
      size_t &task = last_task.try_emplace(array, SIZE_MAX).first->second;
      for (int64_t r = run.row_begin; r < run.row_end; ++r) {
        int64_t dst = offsets[plan.SlotOf(run, r)];
        for (int64_t e = g.indptr[r], e_end = g.indptr[r + 1]; e < e_end;) {
          int64_t chunk = e / chunk_elements;
          int64_t piece_end = std::min(e_end, (chunk + 1) * chunk_elements);
          if (task == SIZE_MAX || tasks[task].chunk != chunk) {
            tasks.push_back({array, field, g.row_shape[0], chunk, {}});
            task = tasks.size() - 1;
          }
          tasks[task].pieces.push_back({e - chunk * chunk_elements, piece_end - e, dst});
          dst += piece_end - e;
          e = piece_end;
        }
      }
    }
  }
  // Where each chunk's bytes are (shard indexes are read here, once per shard), then all of
  // them go to the I/O layer at once.
  prepared.chunks.resize(tasks.size());
  prepared.found.resize(tasks.size());
  prepared.partial.resize(tasks.size());
  std::vector<io::ByteRange> ranges(tasks.size());
  for (size_t t = 0; t < tasks.size(); ++t) {
    const ChunkTask &task = tasks[t];
    const zarr::Array *array = task.array;
    const int64_t coords[1] = {task.chunk};
    prepared.found[t] = array->LocateReadChunk(coords, &prepared.chunks[t]);
    // Blosc decompresses block by block: decode only the blocks the spans need (small blocks
    // of rows often need half a chunk or less).
    int64_t needed = 0;
    for (const Piece &piece : task.pieces) needed += piece.num_elements;
    prepared.partial[t] = array->SupportsPartialDecode() &&
                          needed * 4 < array->metadata().read_chunk_shape[0] * 3;
    if (!prepared.found[t]) continue;
    ranges[t] = prepared.chunks[t].range;
    if (prepared.partial[t] && array->SupportsSelectiveRead()) {
      // ...and read only those blocks: the I/O layer reads the frame's header and block table
      // first, which say where they are.
      const int64_t lo = task.pieces.front().chunk_offset;
      const int64_t hi = task.pieces.back().chunk_offset + task.pieces.back().num_elements;
      ranges[t].part = [array, lo, hi](codecs::ConstBytes head, uint64_t *begin, uint64_t *end) {
        return array->SelectiveSpan(head, lo, hi, begin, end);
      };
      ranges[t].head_nbytes = zarr::Array::kSelectiveHeadNbytes;
    }
  }
  prepared.reads = io.Submit(ranges);
}

void AnnDataSource::LoadCsr(Window &window, Prepared &prepared, ThreadPool &pool) const {
  FieldData &values = window.fields[0];
  FieldData &indices = window.fields[1];
  values.offsets = prepared.offsets;
  indices.offsets = prepared.offsets;
  const int64_t nnz = prepared.offsets.back();
  values.data.Resize(nnz * DTypeSize(values.dtype));
  indices.data.Resize(nnz * DTypeSize(indices.dtype));
  const std::vector<ChunkTask> &tasks = prepared.tasks;

  pool.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const ChunkTask &task = tasks[t];
    const auto &meta = task.array->metadata();
    const int64_t chunk_elements = meta.read_chunk_shape[0];
    const size_t item = DTypeSize(meta.dtype);
    FieldData &field = window.fields[task.field];
    const size_t dst_item = DTypeSize(field.dtype);
    // The chunk arrives in cache-sized pieces, each scattered to its rows' slots while still
    // in L1 (indices checked on the way): the window's memory is written once, by streaming
    // stores, and no whole decoded chunk is written and read back.
    size_t next_piece = 0;  // pieces before it are done
    auto scatter = [&](size_t byte_offset, codecs::ConstBytes bytes) {
      const int64_t begin = static_cast<int64_t>(byte_offset / item);
      const int64_t end = begin + static_cast<int64_t>(bytes.size() / item);
      for (size_t p = next_piece; p < task.pieces.size() && task.pieces[p].chunk_offset < end; ++p) {
        const Piece &piece = task.pieces[p];
        const int64_t piece_end = piece.chunk_offset + piece.num_elements;
        const int64_t lo = std::max(piece.chunk_offset, begin), hi = std::min(piece_end, end);
        if (piece_end <= end) next_piece = p + 1;
        if (hi <= lo) continue;
        const std::byte *src = bytes.data() + (lo - begin) * item;
        std::byte *dst = field.data.data() + (piece.dst_element + lo - piece.chunk_offset) * dst_item;
        // annbatch's uint16 indices are range-checked in the pass that widens them; the full
        // check below then runs only to name the culprit.
        if (task.field == 1 && meta.dtype == DType::kUInt16 && field.dtype == DType::kInt32 &&
            StreamWidenU16ToI32Max(reinterpret_cast<const uint16_t *>(src), reinterpret_cast<int32_t *>(dst),
                                   hi - lo) < task.num_cols)
          continue;
        if (task.field == 1)
          CheckIndicesAny(src, meta.dtype, hi - lo, task.num_cols, *task.array, task.chunk * chunk_elements + lo);
        StreamElements(src, meta.dtype, dst, field.dtype, hi - lo);
      }
    };
    auto decode = [&](int64_t begin, int64_t end) {
      if (!prepared.found[t]) {  // a missing chunk: the fill value
        task.array->DecodeReadChunkRangeInPieces(task.chunk, begin, end - begin, scatter);
        return;
      }
      bool mapped = false;
      const codecs::ConstBytes encoded = prepared.reads->Wait(static_cast<size_t>(t), &mapped);
      task.array->DecodeFetchedRangeInPieces(task.chunk, prepared.chunks[t], encoded, mapped, begin,
                                             end - begin, scatter);
    };
    if (prepared.partial[t]) {
      ForEachSpan(task.pieces, decode);
    } else {
      decode(0, chunk_elements);
    }
    prepared.reads->Done(static_cast<size_t>(t));
    StreamFence();
  });
}

void AnnDataSource::PrepareDense(io::IoScheduler &io, Prepared &prepared) const {
  const int64_t row_elements = fields_[0].RowElements();
  const size_t stored_row_nbytes = row_elements * DTypeSize(fields_[0].dtype);
  const int64_t max_rows = std::max<int64_t>(1, kDenseScratchNbytes / std::max<size_t>(1, stored_row_nbytes));
  std::vector<io::ByteRange> ranges;
  for (const Run &run : prepared.plan.runs) {
    const zarr::Array &array = *groups_[run.group].dense;
    const auto &meta = array.metadata();
    const int64_t band = meta.read_chunk_shape[0];
    const std::vector<int64_t> grid = array.read_grid_shape();
    for (int64_t r = run.row_begin; r < run.row_end;) {
      int64_t end = std::min({run.row_end, (r / band + 1) * band, r + max_rows});
      DensePiece piece{run.group, r, end, run.first + (r - run.row_begin), {}};
      // The read chunks of this band: every chunk along the other dimensions.
      std::vector<int64_t> coords(grid.size(), 0);
      coords[0] = r / band;
      for (;;) {
        zarr::StoredChunk chunk;
        if (array.LocateReadChunk(coords, &chunk)) {
          piece.reads.push_back(ranges.size());
          ranges.push_back(chunk.range);
        }
        size_t d = grid.size();
        while (d > 1 && ++coords[d - 1] == grid[d - 1]) coords[--d] = 0;
        if (d <= 1) break;
      }
      prepared.dense_pieces.push_back(std::move(piece));
      r = end;
    }
  }
  prepared.reads = io.Submit(ranges);
}

void AnnDataSource::LoadDense(Window &window, Prepared &prepared, ThreadPool &pool) const {
  FieldData &field = window.fields[0];
  const int64_t row_elements = fields_[0].RowElements();
  const DType stored = fields_[0].dtype;
  const size_t stored_row_nbytes = row_elements * DTypeSize(stored);
  const size_t row_nbytes = row_elements * DTypeSize(field.dtype);
  field.data.Resize(window.num_slots() * row_nbytes);
  const RowPlan &plan = prepared.plan;
  pool.ParallelFor(static_cast<int64_t>(prepared.dense_pieces.size()), [&](int64_t i) {
    const DensePiece &piece = prepared.dense_pieces[i];
    // The I/O layer has brought the piece's chunks in (for local files: into the page cache,
    // where ReadRegion decodes them from).
    for (size_t read : piece.reads) prepared.reads->Wait(read);
    const zarr::Array &array = *groups_[piece.group].dense;
    std::vector<int64_t> start(array.metadata().shape.size(), 0), count = array.metadata().shape;
    start[0] = piece.row_begin;
    count[0] = piece.row_end - piece.row_begin;
    thread_local ByteBuffer scratch;
    scratch.Resize(count[0] * stored_row_nbytes);
    array.ReadRegion(start, count, scratch.data());
    for (int64_t k = 0; k < count[0]; ++k)
      StreamElements(scratch.data() + k * stored_row_nbytes, stored,
                     field.data.data() + plan.slots[piece.first + k] * row_nbytes, field.dtype, row_elements);
    StreamFence();
  });
}

void AnnDataSource::LoadObs(Window &window, const RowPlan &plan) const {
  for (size_t c = 0; c < groups_.front().obs.size(); ++c) {
    FieldData &field = window.fields[num_matrix_fields_ + c];
    const DType stored = fields_[num_matrix_fields_ + c].dtype;
    const size_t item = DTypeSize(stored), dst_item = DTypeSize(field.dtype);
    field.data.Resize(window.num_slots() * dst_item);
    for (const Run &run : plan.runs) {
      const std::byte *column = groups_[run.group].obs[c].values.data();
      for (int64_t r = run.row_begin; r < run.row_end; ++r)
        ConvertElements(column + r * item, stored, field.data.data() + plan.SlotOf(run, r) * dst_item,
                        field.dtype, 1);
    }
  }
}

}  // namespace biodali::anndata
