#include "anndata/store.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "common/error.h"
#include "zarr/node.h"
#include "zarr/strings.h"

namespace biodali::anndata {
namespace fs = std::filesystem;
namespace {

std::string EncodingType(const zarr::NodeInfo &node) {
  auto it = node.attributes.find("encoding-type");
  if (it == node.attributes.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

zarr::NodeInfo RequireNode(const std::string &path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) FailAt(path, "no such file or directory");
  zarr::NodeInfo node = zarr::ReadNode(path);
  if (node.kind == zarr::NodeKind::kMissing)
    FailAt(path, "not a zarr store (no zarr.json, .zgroup or .zarray)");
  return node;
}

std::vector<int64_t> ReadWholeAsInt64(const zarr::Array &array) {
  const auto &meta = array.metadata();
  if (meta.shape.size() != 1) FailAt(array.path(), "expected a 1-D array, found ", meta.shape.size(), "-D");
  if (!IsIntegral(meta.dtype) || meta.dtype == DType::kBool)
    FailAt(array.path(), "expected an integer array, found ", DTypeName(meta.dtype));
  int64_t n = meta.shape[0];
  ByteBuffer raw(static_cast<size_t>(n) * DTypeSize(meta.dtype));
  int64_t start = 0;
  array.ReadRegion({&start, 1}, {&n, 1}, raw.data());
  std::vector<int64_t> out(n);
  ConvertElements(raw.data(), meta.dtype, out.data(), DType::kInt64, n);
  return out;
}

std::shared_ptr<const zarr::Array> OpenArray(const std::string &path) {
  RequireNode(path);
  return zarr::Array::Open(path);
}

void OpenCsr(AnnDataGroup &group, const zarr::NodeInfo &node) {
  const std::string &path = group.element_path;
  auto shape = node.attributes.find("shape");
  if (shape == node.attributes.end() || !shape->is_array() || shape->size() != 2)
    FailAt(path, "csr_matrix without a 2-element 'shape' attribute");
  group.num_rows = (*shape)[0].get<int64_t>();
  group.row_shape = {(*shape)[1].get<int64_t>()};
  group.data = OpenArray(zarr::JoinPath(path, "data"));
  group.indices = OpenArray(zarr::JoinPath(path, "indices"));
  auto indptr_array = OpenArray(zarr::JoinPath(path, "indptr"));
  const auto &data_meta = group.data->metadata();
  const auto &indices_meta = group.indices->metadata();
  if (data_meta.shape.size() != 1) FailAt(group.data->path(), "CSR data must be 1-D");
  if (indices_meta.shape.size() != 1) FailAt(group.indices->path(), "CSR indices must be 1-D");
  if (indices_meta.shape[0] != data_meta.shape[0])
    FailAt(path, "CSR data has ", data_meta.shape[0], " elements but indices has ",
           indices_meta.shape[0]);
  if (!IsIntegral(indices_meta.dtype) || indices_meta.dtype == DType::kBool)
    FailAt(group.indices->path(), "CSR indices must be integers, found ", DTypeName(indices_meta.dtype));
  group.indptr = ReadWholeAsInt64(*indptr_array);
  const auto &indptr = group.indptr;
  if (static_cast<int64_t>(indptr.size()) != group.num_rows + 1)
    FailAt(indptr_array->path(), "indptr has ", indptr.size(), " entries, expected n_obs + 1 = ",
           group.num_rows + 1);
  if (indptr[0] < 0) FailAt(indptr_array->path(), "indptr[0] is negative (", indptr[0], ")");
  for (int64_t r = 0; r < group.num_rows; ++r) {
    if (indptr[r + 1] < indptr[r])
      FailAt(indptr_array->path(), "indptr is not monotonic: indptr[", r + 1, "] = ", indptr[r + 1],
             " < indptr[", r, "] = ", indptr[r]);
  }
  if (indptr.back() > data_meta.shape[0])
    FailAt(indptr_array->path(), "indptr ends at ", indptr.back(), ", past the end of data (",
           data_meta.shape[0], " elements)");
}

void OpenObsColumn(AnnDataGroup &group, const std::string &name) {
  std::string obs_path = zarr::JoinPath(group.path, "obs");
  std::string col_path = zarr::JoinPath(obs_path, name);
  zarr::NodeInfo node = zarr::ReadNode(col_path);
  if (node.kind == zarr::NodeKind::kMissing) {
    std::string available;
    for (const auto &child : zarr::ListChildren(obs_path)) available += (available.empty() ? "" : ", ") + child;
    FailAt(obs_path, "obs column '", name, "' not found (available: ", available, ")");
  }
  ObsColumn column;
  column.name = name;
  std::shared_ptr<const zarr::Array> array;
  if (node.kind == zarr::NodeKind::kArray) {
    array = zarr::Array::Open(col_path);
    column.dtype = array->metadata().dtype;
  } else {
    std::string encoding = EncodingType(node);
    if (encoding != "categorical")
      FailAt(col_path, "obs column '", name, "' has encoding '", encoding,
             "'; only categorical and numeric columns are supported");
    array = OpenArray(zarr::JoinPath(col_path, "codes"));
    column.categorical = true;
    column.dtype = DType::kInt32;
    column.categories = zarr::ReadStringArray(zarr::JoinPath(col_path, "categories"));
    if (!IsIntegral(array->metadata().dtype))
      FailAt(array->path(), "categorical codes must be integers");
  }
  const auto &meta = array->metadata();
  if (meta.shape.size() != 1 || meta.shape[0] != group.num_rows)
    FailAt(array->path(), "obs column '", name, "' has shape [",
           meta.shape.empty() ? 0 : meta.shape[0], meta.shape.size() > 1 ? ",..." : "",
           "], expected [", group.num_rows, "]");
  int64_t start = 0, count = group.num_rows;
  ByteBuffer raw(static_cast<size_t>(count) * DTypeSize(meta.dtype));
  array->ReadRegion({&start, 1}, {&count, 1}, raw.data());
  column.values.Resize(static_cast<size_t>(count) * DTypeSize(column.dtype));
  ConvertElements(raw.data(), meta.dtype, column.values.data(), column.dtype, count);
  group.obs.push_back(std::move(column));
}

}  // namespace

std::vector<std::string> ExpandStorePaths(const std::vector<std::string> &paths) {
  std::vector<std::string> groups;
  for (const auto &path : paths) {
    zarr::NodeInfo node = RequireNode(path);
    if (EncodingType(node) != "annbatch-preshuffled") {
      groups.push_back(path);
      continue;
    }
    std::map<int64_t, std::string> datasets;
    for (const auto &child : zarr::ListChildren(path)) {
      if (child.rfind("dataset_", 0) != 0) continue;
      std::string digits = child.substr(8);
      if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
      datasets[std::stoll(digits)] = zarr::JoinPath(path, child);
    }
    if (datasets.empty()) FailAt(path, "annbatch collection without dataset_* groups");
    for (auto &[index, dataset] : datasets) groups.push_back(dataset);
  }
  return groups;
}

AnnDataGroup OpenAnnDataGroup(const std::string &group_path, const std::string &element,
                              const std::vector<std::string> &obs_columns) {
  zarr::NodeInfo root = RequireNode(group_path);
  std::string encoding = EncodingType(root);
  if (root.kind != zarr::NodeKind::kGroup || encoding != "anndata")
    FailAt(group_path, "not an AnnData store (root encoding-type is '", encoding,
           "', expected 'anndata')");
  if (element != "X" && element.rfind("layers/", 0) != 0 && element.rfind("obsm/", 0) != 0)
    FailAt(group_path, "array must be 'X', 'layers/<name>' or 'obsm/<name>', got '", element, "'");
  AnnDataGroup group;
  group.path = group_path;
  group.element_path = zarr::JoinPath(group_path, element);
  zarr::NodeInfo node = zarr::ReadNode(group.element_path);
  if (node.kind == zarr::NodeKind::kMissing) FailAt(group.element_path, "element '", element, "' not found");
  if (node.kind == zarr::NodeKind::kGroup) {
    std::string kind = EncodingType(node);
    if (kind == "csc_matrix")
      FailAt(group.element_path, "CSC sparse matrices cannot be read row by row; convert to CSR "
             "first (e.g. adata.X = adata.X.tocsr(); adata.write_zarr(...), or `biodali convert`)");
    if (kind != "csr_matrix")
      FailAt(group.element_path, "unsupported element encoding '", kind, "' (expected csr_matrix or a dense array)");
    group.kind = MatrixKind::kCsr;
    OpenCsr(group, node);
  } else {
    group.kind = MatrixKind::kDense;
    group.dense = zarr::Array::Open(group.element_path);
    const auto &shape = group.dense->metadata().shape;
    if (shape.empty()) FailAt(group.element_path, "a 0-d array has no rows");
    group.num_rows = shape[0];
    group.row_shape.assign(shape.begin() + 1, shape.end());
  }
  for (const auto &name : obs_columns) OpenObsColumn(group, name);
  return group;
}

}  // namespace biodali::anndata
