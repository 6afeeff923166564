// A window: the rows loaded together by one I/O request, decoded, in slots sorted by row id.
// Reader outputs are gathered from windows; a window lives until its last row was copied out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace biodali {

// Uninitialised byte storage (std::vector would zero-fill what decoding overwrites anyway).
class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t nbytes) { Resize(nbytes); }
  void Resize(size_t nbytes) {
    if (nbytes > capacity_nbytes_) {
      data_.reset(new std::byte[nbytes]);
      capacity_nbytes_ = nbytes;
    }
    nbytes_ = nbytes;
  }
  std::byte *data() { return data_.get(); }
  const std::byte *data() const { return data_.get(); }
  size_t nbytes() const { return nbytes_; }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t nbytes_ = 0, capacity_nbytes_ = 0;
};

// What a row source yields per row, one entry per output.
struct FieldSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  // Ragged fields hold a 1-D run of elements per row (CSR values/indices); fixed fields hold
  // `row_shape` elements per row (a dense row; empty shape = a scalar per row).
  bool ragged = false;
  std::vector<int64_t> row_shape;

  int64_t RowElements() const {
    int64_t n = 1;
    for (int64_t d : row_shape) n *= d;
    return n;
  }
};

struct FieldData {
  ByteBuffer data;
  std::vector<int64_t> offsets;  // ragged only: element offset of each slot, num_slots + 1
};

struct Window {
  std::vector<int64_t> rows;      // slot -> row id, ascending
  std::vector<FieldData> fields;  // parallel to RowSource::fields()

  int64_t num_slots() const { return static_cast<int64_t>(rows.size()); }
  size_t nbytes() const {
    size_t n = rows.size() * sizeof(int64_t);
    for (const auto &f : fields) n += f.data.nbytes() + f.offsets.size() * sizeof(int64_t);
    return n;
  }
};

}  // namespace biodali
