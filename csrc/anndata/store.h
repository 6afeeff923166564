// AnnData stores on zarr: which groups a path stands for, and the matrix + obs columns of each.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "engine/window.h"
#include "zarr/array.h"

namespace biodali::anndata {

enum class MatrixKind { kCsr, kDense };

struct ObsColumn {
  std::string name;
  bool categorical = false;
  DType dtype = DType::kInt32;  // int32 codes for categoricals, else the stored dtype
  ByteBuffer values;            // the whole column (one element per row), native endian
  std::vector<std::string> categories;  // categoricals: what the codes index into
};

// One AnnData group: the selected matrix element and obs columns.
struct AnnDataGroup {
  std::string path;          // the AnnData group
  std::string element_path;  // the matrix element (X, layers/<name>, obsm/<name>)
  MatrixKind kind = MatrixKind::kCsr;
  int64_t num_rows = 0;
  std::vector<int64_t> row_shape;  // dense: shape[1:]; CSR: {num_cols}
  // CSR parts. indptr is held in memory (8 bytes per row) and validated once at open.
  std::shared_ptr<const zarr::Array> data, indices;
  std::vector<int64_t> indptr;
  // Dense part.
  std::shared_ptr<const zarr::Array> dense;
  std::vector<ObsColumn> obs;
};

// Expands paths into AnnData groups, in order: an annbatch collection (root attrs
// encoding-type "annbatch-preshuffled") stands for its dataset_0, dataset_1, ... groups.
std::vector<std::string> ExpandStorePaths(const std::vector<std::string> &paths);

// Opens one AnnData group. `element` is "X", "layers/<name>" or "obsm/<name>".
// Throws Error naming the file for every problem (missing, not AnnData, CSC, bad indptr...).
AnnDataGroup OpenAnnDataGroup(const std::string &group_path, const std::string &element,
                              const std::vector<std::string> &obs_columns);

}  // namespace biodali::anndata
