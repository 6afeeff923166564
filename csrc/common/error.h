// Errors raised by the engine. Every message names the file (or store) and the problem,
// because users meet these as Python exceptions far from the C++ that raised them.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace biodali {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
std::string StrCat(Args &&...args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// Throws Error("<path>: <message>").
template <typename... Args>
[[noreturn]] void FailAt(const std::string &path, Args &&...args) {
  throw Error(StrCat(path, ": ", std::forward<Args>(args)...));
}

}  // namespace biodali
