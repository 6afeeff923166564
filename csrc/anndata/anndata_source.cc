#include "anndata/anndata_source.h"

#include <algorithm>
#include <cstring>
#include <limits>
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

// One chunk of one stored 1-D array and the pieces of it a window needs.
struct Piece {
  int64_t chunk_offset;  // first element within the chunk
  int64_t num_elements;
  std::byte *dst;
};
struct ChunkTask {
  const zarr::Array *array;
  bool is_indices;
  int64_t num_cols;
  int64_t chunk;
  std::vector<Piece> pieces;
};

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

std::vector<AnnDataSource::Run> AnnDataSource::MakeRuns(const std::vector<int64_t> &sorted_rows) const {
  std::vector<Run> runs;
  int group = 0;
  for (size_t slot = 0; slot < sorted_rows.size(); ++slot) {
    int64_t row = sorted_rows[slot];
    while (row >= row_starts_[group + 1]) ++group;
    int64_t local = row - row_starts_[group];
    if (!runs.empty() && runs.back().group == group && runs.back().row_end == local) {
      ++runs.back().row_end;
    } else {
      runs.push_back({group, local, local + 1, static_cast<int64_t>(slot)});
    }
  }
  return runs;
}

void AnnDataSource::Load(ThreadPool &pool, Window &window) const {
  window.fields.resize(fields_.size());
  std::vector<Run> runs = MakeRuns(window.rows);
  if (kind() == MatrixKind::kCsr) {
    LoadCsr(window, runs, pool);
  } else {
    LoadDense(window, runs, pool);
  }
  LoadObs(window, runs);
}

void AnnDataSource::LoadCsr(Window &window, const std::vector<Run> &runs, ThreadPool &pool) const {
  const int64_t num_slots = window.num_slots();
  FieldData &values = window.fields[0];
  FieldData &indices = window.fields[1];
  std::vector<int64_t> &offsets = values.offsets;
  offsets.resize(num_slots + 1);
  offsets[0] = 0;
  for (const Run &run : runs) {
    const auto &indptr = groups_[run.group].indptr;
    for (int64_t r = run.row_begin; r < run.row_end; ++r) {
      int64_t slot = run.slot_begin + (r - run.row_begin);
      offsets[slot + 1] = offsets[slot] + (indptr[r + 1] - indptr[r]);
    }
  }
  indices.offsets = offsets;
  const int64_t nnz = offsets.back();
  const size_t value_size = DTypeSize(fields_[0].dtype);
  const size_t index_size = DTypeSize(fields_[1].dtype);
  values.data.Resize(nnz * value_size);
  indices.data.Resize(nnz * index_size);

  // Plan: for each (array, chunk) the pieces the runs need; runs are in row order, so the
  // chunks of one array come in ascending order and pieces of one chunk are adjacent.
  std::vector<ChunkTask> tasks;
  std::unordered_map<const zarr::Array *, size_t> last_task;  // chunks of one array ascend
  for (const Run &run : runs) {
    const AnnDataGroup &g = groups_[run.group];
    int64_t e_begin = g.indptr[run.row_begin], e_end = g.indptr[run.row_end];
    int64_t dst_element = offsets[run.slot_begin];
    for (int which = 0; which < 2; ++which) {
      const zarr::Array *array = which == 0 ? g.data.get() : g.indices.get();
      std::byte *dst_base = which == 0 ? values.data.data() + dst_element * value_size
                                       : indices.data.data() + dst_element * index_size;
      size_t dst_size = which == 0 ? value_size : index_size;
      int64_t chunk_elements = array->metadata().read_chunk_shape[0];
      for (int64_t e = e_begin; e < e_end;) {
        int64_t chunk = e / chunk_elements;
        int64_t chunk_end = std::min(e_end, (chunk + 1) * chunk_elements);
        Piece piece{e - chunk * chunk_elements, chunk_end - e,
                    dst_base + (e - e_begin) * dst_size};
        auto last = last_task.find(array);
        if (last == last_task.end() || tasks[last->second].chunk != chunk) {
          tasks.push_back({array, which == 1, g.row_shape[0], chunk, {}});
          last_task[array] = tasks.size() - 1;
        }
        tasks[last_task[array]].pieces.push_back(piece);
        e = chunk_end;
      }
    }
  }

  pool.ParallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const ChunkTask &task = tasks[t];
    const auto &meta = task.array->metadata();
    const int64_t chunk_elements = meta.read_chunk_shape[0];
    const DType dst_dtype = fields_[task.is_indices ? 1 : 0].dtype;
    const size_t item = DTypeSize(meta.dtype);
    thread_local ByteBuffer scratch;
    int64_t needed = 0;
    for (const Piece &piece : task.pieces) needed += piece.num_elements;
    if (task.pieces.size() == 1 && needed == chunk_elements && meta.dtype == dst_dtype) {
      // The window needs the whole chunk in its stored type: decode straight into place.
      task.array->DecodeReadChunk({&task.chunk, 1}, {task.pieces[0].dst, chunk_elements * item});
    } else if (task.array->SupportsPartialDecode() && needed * 4 < chunk_elements * 3) {
      // Blosc decompresses block by block: decode only the blocks the pieces need (small
      // blocks of rows often need half a chunk or less).
      for (const Piece &piece : task.pieces) {
        if (meta.dtype == dst_dtype) {
          task.array->DecodeReadChunkRange(task.chunk, piece.chunk_offset, piece.num_elements, piece.dst);
        } else {
          scratch.Resize(piece.num_elements * item);
          task.array->DecodeReadChunkRange(task.chunk, piece.chunk_offset, piece.num_elements, scratch.data());
          ConvertElements(scratch.data(), meta.dtype, piece.dst, dst_dtype, piece.num_elements);
        }
      }
    } else {
      scratch.Resize(chunk_elements * item);
      task.array->DecodeReadChunk({&task.chunk, 1}, {scratch.data(), chunk_elements * item});
      for (const Piece &piece : task.pieces)
        ConvertElements(scratch.data() + piece.chunk_offset * item, meta.dtype, piece.dst, dst_dtype,
                        piece.num_elements);
    }
    if (task.is_indices) {
      for (const Piece &piece : task.pieces)
        CheckIndicesAny(piece.dst, dst_dtype, piece.num_elements, task.num_cols, *task.array,
                        task.chunk * chunk_elements + piece.chunk_offset);
    }
  });
}

void AnnDataSource::LoadDense(Window &window, const std::vector<Run> &runs, ThreadPool &pool) const {
  const FieldSpec &spec = fields_[0];
  const int64_t row_elements = spec.RowElements();
  const size_t row_nbytes = row_elements * DTypeSize(spec.dtype);
  window.fields[0].data.Resize(window.num_slots() * row_nbytes);
  std::byte *base = window.fields[0].data.data();
  pool.ParallelFor(static_cast<int64_t>(runs.size()), [&](int64_t i) {
    const Run &run = runs[i];
    const zarr::Array &array = *groups_[run.group].dense;
    std::vector<int64_t> start(array.metadata().shape.size(), 0), count = array.metadata().shape;
    start[0] = run.row_begin;
    count[0] = run.row_end - run.row_begin;
    array.ReadRegion(start, count, base + run.slot_begin * row_nbytes);
  });
}

void AnnDataSource::LoadObs(Window &window, const std::vector<Run> &runs) const {
  for (size_t c = 0; c < groups_.front().obs.size(); ++c) {
    FieldData &field = window.fields[num_matrix_fields_ + c];
    const size_t item = DTypeSize(fields_[num_matrix_fields_ + c].dtype);
    field.data.Resize(window.num_slots() * item);
    for (const Run &run : runs) {
      const ObsColumn &col = groups_[run.group].obs[c];
      std::memcpy(field.data.data() + run.slot_begin * item,
                  col.values.data() + run.row_begin * item, (run.row_end - run.row_begin) * item);
    }
  }
}

}  // namespace biodali::anndata
