// Dispatch on the value dtypes the expression transforms accept.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "common/error.h"

// Runs `...` with `T` bound to the C++ type of `dtype` (numeric types except float16 and bool).
#define BIODALI_VALUE_TYPE_SWITCH(dtype, T, ...)                                              \
  switch (dtype) {                                                                            \
    case ::biodali::DType::kFloat32: { using T = float; __VA_ARGS__; } break;                 \
    case ::biodali::DType::kFloat64: { using T = double; __VA_ARGS__; } break;                \
    case ::biodali::DType::kInt8: { using T = int8_t; __VA_ARGS__; } break;                   \
    case ::biodali::DType::kInt16: { using T = int16_t; __VA_ARGS__; } break;                 \
    case ::biodali::DType::kInt32: { using T = int32_t; __VA_ARGS__; } break;                 \
    case ::biodali::DType::kInt64: { using T = int64_t; __VA_ARGS__; } break;                 \
    case ::biodali::DType::kUInt8: { using T = uint8_t; __VA_ARGS__; } break;                 \
    case ::biodali::DType::kUInt16: { using T = uint16_t; __VA_ARGS__; } break;               \
    case ::biodali::DType::kUInt32: { using T = uint32_t; __VA_ARGS__; } break;               \
    case ::biodali::DType::kUInt64: { using T = uint64_t; __VA_ARGS__; } break;               \
    default:                                                                                  \
      throw ::biodali::Error(::biodali::StrCat("values of type ",                             \
                                               ::biodali::DTypeName(dtype),                   \
                                               " are not supported; cast them first (e.g. "   \
                                               "the reader's dtype=types.FLOAT)"));           \
  }

// Explicit instantiation of a function template for every accepted value type.
#define BIODALI_FOR_EACH_VALUE_TYPE(X) \
  X(float) X(double) X(int8_t) X(int16_t) X(int32_t) X(int64_t) X(uint8_t) X(uint16_t) \
  X(uint32_t) X(uint64_t)
