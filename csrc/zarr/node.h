// Zarr hierarchy nodes (groups and arrays) on the local filesystem, formats 2 and 3.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace biodali::zarr {

enum class NodeKind { kMissing, kGroup, kArray };

struct NodeInfo {
  NodeKind kind = NodeKind::kMissing;
  int zarr_format = 0;            // 2 or 3 (0 when missing)
  nlohmann::json attributes;      // v3: zarr.json "attributes"; v2: .zattrs (empty object if absent)
  nlohmann::json metadata;        // v3: whole zarr.json; v2: .zarray or .zgroup
};

// Reads the node at `path` (a directory). Throws Error naming the file for unparseable JSON.
NodeInfo ReadNode(const std::string &path);

// Names of the direct children of a group directory that are zarr nodes, sorted.
std::vector<std::string> ListChildren(const std::string &group_path);

// Joins "a/b" + "c" -> "a/b/c".
std::string JoinPath(const std::string &a, const std::string &b);

}  // namespace biodali::zarr
