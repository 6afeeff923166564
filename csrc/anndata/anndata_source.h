// Rows of AnnData stores (CSR or dense), concatenated in order, as a RowSource.
// Fields: CSR -> values (stored dtype), indices (int32); dense -> the row; then one scalar per
// obs column.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "anndata/store.h"
#include "engine/row_source.h"

namespace biodali::anndata {

struct AnnDataSourceOptions {
  std::vector<std::string> paths;
  std::string element = "X";
  std::vector<std::string> obs_columns;
};

class AnnDataSource final : public RowSource {
 public:
  explicit AnnDataSource(const AnnDataSourceOptions &options);

  int64_t num_rows() const override { return row_starts_.back(); }
  const std::vector<FieldSpec> &fields() const override { return fields_; }
  std::unique_ptr<PreparedLoad> Prepare(io::IoScheduler &io, const std::vector<int64_t> &rows) const override;
  void Load(ThreadPool &pool, PreparedLoad &prepared, Window &window) const override;
  using RowSource::Load;

  MatrixKind kind() const { return groups_.front().kind; }
  const std::vector<AnnDataGroup> &groups() const { return groups_; }

 private:
  // Consecutive rows of one group; row row_begin + k goes to window slot slots[first + k] of
  // the RowPlan that holds the run.
  struct Run {
    int group;
    int64_t row_begin, row_end;  // local to the group
    int64_t first;
  };
  struct RowPlan {
    std::vector<int64_t> slots;  // the window's slots, ordered by their row
    std::vector<Run> runs;       // in row order
    int64_t SlotOf(const Run &run, int64_t row) const { return slots[run.first + (row - run.row_begin)]; }
  };
  struct Prepared;
  RowPlan PlanRows(const std::vector<int64_t> &rows) const;
  void PrepareCsr(io::IoScheduler &io, Prepared &prepared) const;
  void PrepareDense(io::IoScheduler &io, Prepared &prepared) const;
  void LoadCsr(Window &window, Prepared &prepared, ThreadPool &pool) const;
  void LoadDense(Window &window, Prepared &prepared, ThreadPool &pool) const;
  void LoadObs(Window &window, const RowPlan &plan) const;

  std::vector<AnnDataGroup> groups_;
  std::vector<int64_t> row_starts_;  // global row of each group's first row, + total
  std::vector<FieldSpec> fields_;
  int num_matrix_fields_ = 0;
};

}  // namespace biodali::anndata
