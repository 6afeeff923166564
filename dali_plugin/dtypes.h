// biodali::DType <-> DALI's type ids, for every plugin operator.
#pragma once

#include "common/dtype.h"
#include "common/error.h"
#include "dali/core/dali_data_type.h"

namespace biodali::plugin {

inline dali::DALIDataType ToDali(DType dtype) {
  switch (dtype) {
    case DType::kBool: return ::DALI_BOOL;
    case DType::kInt8: return ::DALI_INT8;
    case DType::kInt16: return ::DALI_INT16;
    case DType::kInt32: return ::DALI_INT32;
    case DType::kInt64: return ::DALI_INT64;
    case DType::kUInt8: return ::DALI_UINT8;
    case DType::kUInt16: return ::DALI_UINT16;
    case DType::kUInt32: return ::DALI_UINT32;
    case DType::kUInt64: return ::DALI_UINT64;
    case DType::kFloat16: return ::DALI_FLOAT16;
    case DType::kFloat32: return ::DALI_FLOAT;
    case DType::kFloat64: return ::DALI_FLOAT64;
  }
  return ::DALI_NO_TYPE;
}

inline DType FromDali(dali::DALIDataType dtype) {
  for (int i = 0; i <= static_cast<int>(DType::kFloat64); ++i)
    if (ToDali(static_cast<DType>(i)) == dtype) return static_cast<DType>(i);
  throw Error(StrCat("dtype ", dali::to_string(dtype), " is not supported"));
}

}  // namespace biodali::plugin
