// String arrays (AnnData categorical `categories`, dataframe indices): read whole, once, when
// a store is opened. Unlike numeric arrays they have no fixed element size, so they are not an
// Array; the metadata and codecs are parsed by the same code (ParseArraySpec).
#pragma once

#include <string>
#include <vector>

namespace biodali::zarr {

// Reads the whole 1-D (or 0-d, as one item) string array in directory `path`: zarr v3
// data_type "string" with the vlen-utf8 codec, then bytes->bytes codecs, possibly sharded;
// zarr v2 dtype "|O" with the vlen-utf8 filter and any supported compressor. Missing chunks,
// shards and inner chunks read as the fill value (usually ""). Items are returned as stored
// (UTF-8, not validated). Throws Error naming the file and problem: not a string array,
// unsupported codec, truncated vlen data, item count mismatch, corrupt compressed data.
std::vector<std::string> ReadStringArray(const std::string &path);

}  // namespace biodali::zarr
