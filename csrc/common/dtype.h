// Element types of stored arrays and of reader outputs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace biodali {

enum class DType : uint8_t {
  kBool, kInt8, kInt16, kInt32, kInt64, kUInt8, kUInt16, kUInt32, kUInt64,
  kFloat16, kFloat32, kFloat64,
};

size_t DTypeSize(DType dtype);
const char *DTypeName(DType dtype);  // numpy spelling: "float32", "uint16", ...
bool IsIntegral(DType dtype);        // integers and bool

// Parses a numpy/zarr-v3 name ("float32", "uint16", "bool"). Returns false if unknown.
bool ParseDTypeName(std::string_view name, DType *dtype);

// Parses a zarr v2 / numpy typestr ("<f4", ">i8", "|u1", "|b1"). Returns false if unknown or
// not a fixed-size numeric type; *big_endian tells the stored byte order.
bool ParseTypestr(std::string_view typestr, DType *dtype, bool *big_endian);

// Converts num_elements values from `src_dtype` to `dst_dtype` (native endian). Casting
// between identical types is a memcpy.
void ConvertElements(const void *src, DType src_dtype, void *dst, DType dst_dtype,
                     size_t num_elements);

// ConvertElements for output buffers that are written once and read later by someone else
// (reader outputs, much larger than the cache): same-type copies and uint16 -> int32 go
// through non-temporal stores on AVX2 machines, so writing a row does not first read its
// destination lines into the cache (a third of the copy's memory traffic). Not fenced: call
// StreamFence() once after a run of calls (a row each), before the data is handed to another
// thread (a fence per row would wait for every row's stores to drain).
void StreamElements(const void *src, DType src_dtype, void *dst, DType dst_dtype,
                    size_t num_elements);

// StreamElements(src, kUInt16, dst, kInt32, n) that also returns the largest value copied (0
// for n == 0): CSR column indices are range-checked in the same pass that widens them.
uint16_t StreamWidenU16ToI32Max(const uint16_t *src, int32_t *dst, size_t num_elements);

// Orders the streaming stores made by this thread before its later stores (sfence).
void StreamFence();

}  // namespace biodali
