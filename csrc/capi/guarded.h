// What every C API of biodali (testing_api, io_api, kernels_api) does at the C boundary:
// exceptions never cross it; they become a nonzero return and the message copied into `err`.
#pragma once

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>

namespace biodali::capi {

// Copies `s` NUL-terminated into out[0, cap), truncated to fit.
inline void CopyString(const std::string &s, char *out, size_t cap) {
  if (out == nullptr || cap == 0) return;
  size_t n = std::min(s.size(), cap - 1);
  std::memcpy(out, s.data(), n);
  out[n] = '\0';
}

// Runs `body`: 0 on success, else 1 with the exception's message in err.
template <typename F>
int Guarded(char *err, size_t err_cap, F &&body) {
  try {
    body();
    return 0;
  } catch (const std::exception &e) {
    CopyString(e.what(), err, err_cap);
  } catch (...) {
    CopyString("unknown C++ exception", err, err_cap);
  }
  return 1;
}

}  // namespace biodali::capi
