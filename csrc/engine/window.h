// A window: the rows loaded together by one I/O request, decoded, in the order the stream
// emits them (slot s = the window's s-th position). A batch of consecutive positions is then
// one contiguous run of every field, which readers hand out without copying: a window lives
// until the last output or row referencing it is dropped.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>
#include <cstdint>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/dtype.h"

namespace biodali {

// Uninitialised byte storage (std::vector would zero-fill what decoding overwrites anyway).
// Large buffers sit on transparent huge pages where the kernel allows it (madvise mode): rows
// are scattered into a window in random order, and with 4 KiB pages nearly every row costs a
// TLB miss and its first touch a page fault per 4 KiB.
class ByteBuffer {
 public:
  ByteBuffer() = default;
  explicit ByteBuffer(size_t nbytes) { Resize(nbytes); }
  // Keeps the old allocation when it is big enough; grows with headroom so that windows of
  // slightly varying size settle on one allocation (fresh pages cost a fault and a zeroing each).
  void Resize(size_t nbytes) {
    if (nbytes > capacity_nbytes_) {
      size_t capacity = nbytes + nbytes / 8;
      data_.reset();
      if (capacity >= kHugePageNbytes) {
        capacity = (capacity + kHugePageNbytes - 1) / kHugePageNbytes * kHugePageNbytes;
        data_.reset(static_cast<std::byte *>(std::aligned_alloc(kHugePageNbytes, capacity)));
        if (data_) ::madvise(data_.get(), capacity, MADV_HUGEPAGE);  // a hint: failure is harmless
      } else {
        data_.reset(static_cast<std::byte *>(std::malloc(capacity)));
      }
      if (!data_) throw std::bad_alloc();
      capacity_nbytes_ = capacity;
    }
    nbytes_ = nbytes;
  }
  std::byte *data() { return data_.get(); }
  const std::byte *data() const { return data_.get(); }
  size_t nbytes() const { return nbytes_; }

 private:
  static constexpr size_t kHugePageNbytes = size_t{2} << 20;
  struct Free {
    void operator()(std::byte *p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
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
  // The type readers output by default; differs from `dtype` where converting while copying
  // out is cheaper than converting at load (uint16 CSR indices -> int32).
  DType output_dtype = DType::kFloat32;

  int64_t RowElements() const {
    int64_t n = 1;
    for (int64_t d : row_shape) n *= d;
    return n;
  }
};

struct FieldData {
  // The type the window holds (the reader's output type, set by the stream before Load): the
  // source converts while scattering decoded rows into their slots.
  DType dtype = DType::kFloat32;
  ByteBuffer data;
  std::vector<int64_t> offsets;  // ragged only: element offset of each slot, num_slots + 1
};

struct Window {
  std::vector<int64_t> rows;      // slot -> row id, in emission order (unique, unsorted)
  std::vector<FieldData> fields;  // parallel to RowSource::fields()

  int64_t num_slots() const { return static_cast<int64_t>(rows.size()); }
};

// Index of the first element of `slot` in a field's data (slot == num_slots: one past the
// end), so slots [a, b) hold elements [SlotElement(a), SlotElement(b)).
inline int64_t SlotElement(const FieldSpec &spec, const FieldData &data, int64_t slot) {
  return spec.ragged ? data.offsets[slot] : slot * spec.RowElements();
}

// Windows handed out as shared_ptrs come back here when the last row referencing them is
// dropped, so their buffers are reused instead of re-allocated. At most `max_windows` exist at
// once (in use or free): that is the reader's memory bound.
class WindowPool : public std::enable_shared_from_this<WindowPool> {
 public:
  explicit WindowPool(int max_windows) : max_windows_(max_windows) {}
  // Waits until fewer than max_windows windows are in use, or `may_exceed()` (the consumer
  // cannot progress without a new window: its batch spans more windows than the bound);
  // returns null if `cancelled()` turns true while waiting. Both are polled every few ms.
  std::shared_ptr<Window> Acquire(const std::function<bool()> &cancelled,
                                  const std::function<bool()> &may_exceed);
  // Makes a waiting Acquire re-check its conditions now rather than at its next poll.
  void Wake() { released_.notify_all(); }

 private:
  void Release(Window *window);
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<std::unique_ptr<Window>> free_;
  int in_use_ = 0;
  int max_windows_;
};

inline std::shared_ptr<Window> WindowPool::Acquire(const std::function<bool()> &cancelled,
                                                   const std::function<bool()> &may_exceed) {
  std::unique_ptr<Window> window;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    while (in_use_ >= max_windows_ && !may_exceed()) {
      if (cancelled()) return nullptr;
      released_.wait_for(lock, std::chrono::milliseconds(5));
    }
    ++in_use_;
    if (!free_.empty()) {
      window = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (!window) window = std::make_unique<Window>();
  std::weak_ptr<WindowPool> pool = weak_from_this();
  return std::shared_ptr<Window>(window.release(), [pool](Window *w) {
    if (auto p = pool.lock()) {
      p->Release(w);
    } else {
      delete w;
    }
  });
}

inline void WindowPool::Release(Window *window) {
  std::unique_ptr<Window> owned(window);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --in_use_;
    if (static_cast<int>(free_.size()) < max_windows_) free_.push_back(std::move(owned));
  }
  released_.notify_all();
}

}  // namespace biodali
