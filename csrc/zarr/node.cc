#include "zarr/node.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "common/error.h"

namespace biodali::zarr {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Returns false when the file does not exist; Error for other read failures.
bool ReadTextFile(const std::string &path, std::string *text) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  if (!in) FailAt(path, "cannot open for reading");
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) FailAt(path, "read failed");
  *text = os.str();
  return true;
}

bool ReadJsonFile(const std::string &path, json *out) {
  std::string text;
  if (!ReadTextFile(path, &text)) return false;
  try {
    *out = json::parse(text);
  } catch (const json::exception &e) {
    FailAt(path, "invalid JSON: ", e.what());
  }
  if (!out->is_object()) FailAt(path, "metadata must be a JSON object");
  return true;
}

bool HasNodeMetadata(const std::string &dir) {
  std::error_code ec;
  for (const char *name : {"zarr.json", ".zarray", ".zgroup"}) {
    if (fs::is_regular_file(JoinPath(dir, name), ec)) return true;
  }
  return false;
}

}  // namespace

std::string JoinPath(const std::string &a, const std::string &b) {
  if (a.empty()) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

NodeInfo ReadNode(const std::string &path) {
  NodeInfo info;
  info.attributes = json::object();
  json meta;
  std::string v3_file = JoinPath(path, "zarr.json");
  if (ReadJsonFile(v3_file, &meta)) {
    try {
      int format = meta.value("zarr_format", 0);
      if (format != 3) FailAt(v3_file, "zarr_format is ", format, ", expected 3");
      std::string node_type = meta.value("node_type", std::string());
      if (node_type == "array") {
        info.kind = NodeKind::kArray;
      } else if (node_type == "group") {
        info.kind = NodeKind::kGroup;
      } else {
        FailAt(v3_file, "node_type '", node_type, "' is neither 'array' nor 'group'");
      }
    } catch (const json::exception &e) {
      FailAt(v3_file, "malformed metadata: ", e.what());
    }
    info.zarr_format = 3;
    if (meta.contains("attributes") && meta["attributes"].is_object()) {
      info.attributes = meta["attributes"];
    }
    info.metadata = std::move(meta);
    return info;
  }
  if (ReadJsonFile(JoinPath(path, ".zarray"), &meta)) {
    info.kind = NodeKind::kArray;
  } else if (ReadJsonFile(JoinPath(path, ".zgroup"), &meta)) {
    info.kind = NodeKind::kGroup;
  } else {
    return info;  // kMissing
  }
  info.zarr_format = 2;
  info.metadata = std::move(meta);
  json attrs;
  if (ReadJsonFile(JoinPath(path, ".zattrs"), &attrs)) info.attributes = std::move(attrs);
  return info;
}

std::vector<std::string> ListChildren(const std::string &group_path) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(group_path, ec), end;
  if (ec) return names;  // not a directory: no children
  for (; it != end; it.increment(ec)) {
    if (ec) FailAt(group_path, "cannot list directory: ", ec.message());
    std::error_code type_ec;
    if (!it->is_directory(type_ec)) continue;
    std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (HasNodeMetadata(it->path().string())) names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace biodali::zarr
