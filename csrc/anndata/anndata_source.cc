#include "anndata/anndata_source.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include "common/error.h"

namespace biodali::anndata {
namespace fs = std::filesystem;
namespace {

// Categorical codes only mean the same across stores if the categories are the same: compare
// the stored categories arrays file by file.
bool SameStoredArray(const std::string &a, const std::string &b) {
  auto files = [](const std::string &root) {
    std::vector<std::string> out;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec); it != fs::recursive_directory_iterator(); ++it)
      if (it->is_regular_file()) out.push_back(fs::relative(it->path(), root).string());
    std::sort(out.begin(), out.end());
    return out;
  };
  auto read = [](const fs::path &p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  auto fa = files(a), fb = files(b);
  if (fa != fb) return false;
  for (const auto &f : fa)
    if (read(fs::path(a) / f) != read(fs::path(b) / f)) return false;
  return true;
}

template <typename T>
void CheckIndices(const T *indices, int64_t n, int64_t num_cols, const zarr::Array &array,
                  int64_t first_element) {
  // A branch-free scan (vectorises); the slow search for the culprit runs only on failure.
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    int64_t v = static_cast<int64_t>(indices[i]);
    bad |= (v < 0) | (v >= num_cols);
  }
  if (!bad) return;
  for (int64_t i = 0; i < n; ++i) {
    int64_t v = static_cast<int64_t>(indices[i]);
    if (v < 0 || v >= num_cols)
      FailAt(array.path(), "column index ", v, " at element ", first_element + i,
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
      if (col.categorical && &g != &first && !SameStoredArray(col.categories_path, ref.categories_path))
        FailAt(col.categories_path, "categories of obs column '", col.name, "' differ from those in ",
               ref.categories_path, "; codes would mean different labels (re-encode the stores with "
               "shared categories, e.g. with `biodali convert`)");
    }
    row_starts_.push_back(row_starts_.back() + g.num_rows);
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
    bool whole = task.pieces.size() == 1 && task.pieces[0].num_elements == chunk_elements;
    if (whole && meta.dtype == dst_dtype) {
      // The window needs the whole chunk in its stored type: decode straight into place.
      task.array->DecodeReadChunk({&task.chunk, 1}, {task.pieces[0].dst, chunk_elements * item});
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
