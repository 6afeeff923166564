// A C API over the expression transforms for tests and benchmarks without DALI (loaded from
// Python with ctypes: python/biodali/_kernels.py).
//
// Two halves with the same operations:
// - biodali_kcpu_*: the CPU twins (csrc/expression/transforms.h) over a CSR batch in host memory
//   (contiguous values, int32 indices, int64 offsets[num_rows + 1]); kernels_api.cc.
// - biodali_kgpu_*: the CUDA kernels (csrc/expression/transforms_gpu.h) on raw device pointers,
//   exactly the arguments of the gpu:: functions: per-row pointer tables, device offsets, a device
//   error-flag word and a cudaStream_t (0: the legacy default stream). They launch and return
//   without synchronizing; kernels_api_gpu.cu, compiled only where nvcc is found.
//
// Both halves are built into libbiodali.so (setup.py compiles every csrc/ source) and into the
// DALI-free libbiodali_kernels.so (python -m biodali._kernels build), which links no DALI and
// so loads on a GPU machine where DALI is not installed.
//
// Value types are numpy names ("float32", "uint16", ...); dense types "float32", "float16",
// "bfloat16". Every function returns 0 on success, or nonzero with the error message copied
// (NUL-terminated, truncated to fit) into `err`.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <string>

#include "capi/guarded.h"
#include "common/dtype.h"
#include "common/error.h"
#include "expression/transforms.h"

#define BIODALI_KAPI extern "C" __attribute__((visibility("default")))

namespace biodali::kapi {

using capi::CopyString;
using capi::Guarded;

inline DType ValueType(const char *name) {
  DType dtype;
  if (name == nullptr || !ParseDTypeName(name, &dtype))
    throw Error(StrCat("unknown value type '", name ? name : "(null)", "'"));
  if (!expression::IsSupportedValueType(dtype))
    throw Error(StrCat("values of type ", name, " are not supported; cast them first"));
  return dtype;
}

inline expression::DenseType DenseTypeOf(const char *name) {
  std::string s = name ? name : "";
  if (s == "float32") return expression::DenseType::kFloat32;
  if (s == "float16") return expression::DenseType::kFloat16;
  if (s == "bfloat16") return expression::DenseType::kBFloat16;
  throw Error(StrCat("unknown dense type '", s, "' (float32, float16 or bfloat16)"));
}

}  // namespace biodali::kapi
