// fn.biodali.readers.anndata: rows of AnnData zarr stores (CSR or dense) as a DALI source.
#include <string>
#include <vector>

#include "anndata/anndata_source.h"
#include "common/error.h"
#include "anndata/store.h"
#include "dali_plugin/row_stream_reader.h"
#include "zarr/node.h"

namespace biodali::plugin {
namespace {

std::vector<std::string> Strings(const dali::OpSpec &spec, const char *name) {
  return spec.GetRepeatedArgument<std::string>(name);
}

anndata::AnnDataSourceOptions SourceOptions(const dali::OpSpec &spec) {
  anndata::AnnDataSourceOptions options;
  options.paths = Strings(spec, "path");
  options.element = spec.GetArgument<std::string>("array");
  if (spec.HasArgument("obs_columns")) options.obs_columns = Strings(spec, "obs_columns");
  return options;
}

// Outputs: values + indices (sparse) or the row (dense), then obs columns, then the row index.
// Whether the element is sparse is read from the first store's metadata.
int NumOutputs(const dali::OpSpec &spec) {
  auto options = SourceOptions(spec);
  if (options.paths.empty()) throw Error("anndata reader: `path` is empty");
  auto groups = anndata::ExpandStorePaths({options.paths.front()});
  auto node = zarr::ReadNode(zarr::JoinPath(groups.front(), options.element));
  int matrix_outputs = node.kind == zarr::NodeKind::kGroup ? 2 : 1;
  return matrix_outputs + static_cast<int>(options.obs_columns.size()) +
         (spec.GetArgument<bool>("return_row_index") ? 1 : 0);
}

class AnnDataReader final : public RowStreamReader {
 public:
  explicit AnnDataReader(const dali::OpSpec &spec)
      : RowStreamReader(spec, std::make_shared<anndata::AnnDataSource>(SourceOptions(spec))) {}
};

}  // namespace
}  // namespace biodali::plugin

DALI_REGISTER_OPERATOR(biodali__readers__Anndata, biodali::plugin::AnnDataReader, dali::CPU);

DALI_SCHEMA(biodali__readers__Anndata)
    .DocStr(R"(Reads rows (cells) of AnnData stores on zarr (formats 2 and 3, sharded or not,
annbatch collections) with block shuffling, sharding and checkpointing.

Outputs per row: for a CSR element ``values`` (stored dtype or ``dtype``) and ``indices``
(int32); for a dense element the row; then one output per ``obs_columns`` name (categorical ->
int32 codes, numeric -> its dtype); then, with ``return_row_index``, the int64 row position.)")
    .NumInput(0)
    .OutputFn(biodali::plugin::NumOutputs)
    .AddArg("path", "An AnnData zarr store, annbatch collection, or a list of them (concatenated in order).",
            ::DALI_STRING_VEC)
    .AddOptionalArg("array", R"(Element to read: "X", "layers/<name>" or "obsm/<name>".)",
                    std::string("X"))
    .AddOptionalArg("obs_columns", "obs columns to output, one output each.", std::vector<std::string>{})
    .AddParent("biodali_RowStreamReaderBase");
