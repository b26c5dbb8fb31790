#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace pinmoe {

uint64_t TensorInfo::NumElements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // validated not to overflow at parse time
  return n;
}

std::string ShapeString(std::span<const int64_t> shape) {
  return StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(std::string_view header_json,
                                                               uint64_t data_size,
                                                               std::string_view label) {
  nlohmann::json header = nlohmann::json::parse(header_json, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::InvalidArgumentError(
        StrCat(label, ": safetensors header is not a JSON object"));
  }
  std::vector<TensorInfo> out;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    const nlohmann::json& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(StrCat(label, ": __metadata__ is not an object"));
      }
      continue;
    }
    auto fail = [&](std::string_view why) {
      return absl::InvalidArgumentError(StrCat(label, ": tensor '", name, "': ", why));
    };
    if (!entry.is_object()) return fail("header entry is not an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) return fail("missing dtype");
    if (sh == entry.end() || !sh->is_array()) return fail("missing shape");
    if (off == entry.end() || !off->is_array() || off->size() != 2) {
      return fail("missing data_offsets [begin, end]");
    }
    TensorInfo info;
    info.name = name;
    std::optional<DType> dtype = ParseDType(dt->get<std::string>());
    if (!dtype) return fail(StrCat("unknown dtype '", dt->get<std::string>(), "'"));
    info.dtype = *dtype;
    if (sh->size() > 8) return fail("more than 8 dimensions");
    uint64_t elements = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return fail("shape has a non-integer or negative dimension");
      uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40) || (v != 0 && elements > (1ull << 62) / v)) {
        return fail("shape is too large");
      }
      elements *= v;
      info.shape.push_back(static_cast<int64_t>(v));
    }
    for (const auto& o : *off) {
      if (!o.is_number_unsigned()) return fail("data_offsets are not non-negative integers");
    }
    info.begin = (*off)[0].get<uint64_t>();
    info.end = (*off)[1].get<uint64_t>();
    if (info.end < info.begin) return fail("data_offsets end before they begin");
    if (info.end > data_size) {
      return fail(StrCat("data_offsets [", info.begin, ", ", info.end,
                               ") run past the end of the data (", data_size,
                               " bytes); is the file truncated?"));
    }
    uint64_t elem_size = DTypeSize(info.dtype);
    if (elements > UINT64_MAX / elem_size || info.end - info.begin != elements * elem_size) {
      return fail(StrCat("byte range [", info.begin, ", ", info.end, ") does not hold ",
                               DTypeName(info.dtype), " ", ShapeString(info.shape)));
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i].begin < out[i - 1].end) {
      return absl::InvalidArgumentError(StrCat(label, ": tensors '", out[i - 1].name,
                                                     "' and '", out[i].name,
                                                     "' overlap in the data section"));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(StrCat(path, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(StrCat(path, ": not a regular file"));
  }
  auto file = std::unique_ptr<MappedFile>(new MappedFile());
  file->path_ = path;
  file->size_ = static_cast<uint64_t>(st.st_size);
  if (file->size_ > 0) {
    void* p = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      return absl::InternalError(StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
    file->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  return file;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  ASSIGN_OR_RETURN(file->map_, MappedFile::Open(path));
  const uint64_t size = file->map_->size();
  if (size < 8) {
    return absl::InvalidArgumentError(
        StrCat(path, ": file is ", size, " bytes, too short for a safetensors header"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->map_->data()[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(StrCat(path, ": header length ", header_len,
                                                   " exceeds the ", kMaxSafetensorsHeaderBytes,
                                                   "-byte limit"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(StrCat(path, ": header length ", header_len,
                                                   " runs past the end of the ", size,
                                                   "-byte file; is the file truncated?"));
  }
  file->data_start_ = 8 + header_len;
  std::string_view header(reinterpret_cast<const char*>(file->map_->data() + 8), header_len);
  ASSIGN_OR_RETURN(file->tensors_, ParseSafetensorsHeader(header, size - file->data_start_, path));
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->by_name_[file->tensors_[i].name] = i;
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::Bytes(const TensorInfo& info) const {
  return {map_->data() + data_start_ + info.begin, info.end - info.begin};
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = model_dir;
  const std::string index_path = JoinPath(model_dir, "model.safetensors.index.json");
  const std::string single_path = JoinPath(model_dir, "model.safetensors");
  if (FileExists(index_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path, /*max_bytes=*/256ull << 20));
    nlohmann::json index = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          StrCat(index_path, ": not a safetensors index (no weight_map object)"));
    }
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            StrCat(index_path, ": weight_map entry for '", name, "' is not a file name"));
      }
      std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..") {
        return absl::InvalidArgumentError(StrCat(index_path, ": weight_map entry for '", name,
                                                       "' names '", f,
                                                       "', which is not a file in the model directory"));
      }
      ckpt->weight_map_[name] = f;
    }
    // Every shard must exist up front: a missing shard is an error at load, not mid-generation.
    std::map<std::string, int> shards;
    for (const auto& [name, f] : ckpt->weight_map_) shards[f]++;
    for (const auto& [f, count] : shards) {
      if (!FileExists(JoinPath(model_dir, f))) {
        return absl::NotFoundError(StrCat(JoinPath(model_dir, f), ": shard named by ",
                                                index_path, " (", count,
                                                " tensors) is missing"));
      }
    }
  } else if (FileExists(single_path)) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    for (const auto& t : file->tensors()) ckpt->weight_map_[t.name] = "model.safetensors";
    ckpt->open_files_["model.safetensors"] = std::move(file);
  } else {
    return absl::NotFoundError(StrCat(model_dir, ": no model.safetensors or ",
                                            "model.safetensors.index.json"));
  }
  return ckpt;
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(weight_map_.size());
  for (const auto& [name, f] : weight_map_) names.push_back(name);
  return names;
}

bool Checkpoint::Has(std::string_view name) const { return weight_map_.count(name) > 0; }

absl::StatusOr<SafetensorsFile*> Checkpoint::FileFor(std::string_view name,
                                                     std::string* file_name) {
  auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    return absl::NotFoundError(StrCat(dir_, ": tensor '", name, "' is not in the checkpoint"));
  }
  *file_name = it->second;
  auto open = open_files_.find(it->second);
  if (open == open_files_.end()) {
    ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(JoinPath(dir_, it->second)));
    open = open_files_.emplace(it->second, std::move(file)).first;
  }
  return open->second.get();
}

absl::StatusOr<std::pair<SafetensorsFile*, const TensorInfo*>> Checkpoint::Locate(std::string_view name) {
  std::string file_name;
  ASSIGN_OR_RETURN(SafetensorsFile * file, FileFor(name, &file_name));
  const TensorInfo* info = file->Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(StrCat(file->path(), ": tensor '", name,
                                      "' is listed in the index but not in this shard"));
  }
  return std::make_pair(file, info);
}

absl::StatusOr<const TensorInfo*> Checkpoint::Info(std::string_view name) {
  ASSIGN_OR_RETURN(auto located, Locate(name));
  return located.second;
}

absl::Status Checkpoint::ReadF32Into(std::string_view name, std::span<const int64_t> expected_shape,
                                     float* dst) {
  ASSIGN_OR_RETURN(auto located, Locate(name));
  auto [file, info] = located;
  if (!std::equal(info->shape.begin(), info->shape.end(), expected_shape.begin(),
                  expected_shape.end())) {
    return absl::InvalidArgumentError(StrCat(
        file->path(), ": tensor '", name, "' has shape ", ShapeString(info->shape),
        " but config.json implies ", ShapeString(expected_shape)));
  }
  if (!IsWeightDType(info->dtype)) {
    return absl::InvalidArgumentError(StrCat(file->path(), ": tensor '", name, "' has dtype ",
                                                   DTypeName(info->dtype),
                                                   "; weights must be F32, F16 or BF16"));
  }
  std::span<const uint8_t> bytes = file->Bytes(*info);
  WidenToF32(info->dtype, bytes.data(), info->NumElements(), dst);
  bytes_read_ += bytes.size();
  return absl::OkStatus();
}

absl::StatusOr<std::span<const uint8_t>> Checkpoint::RawBytes(std::string_view name) {
  ASSIGN_OR_RETURN(auto located, Locate(name));
  std::span<const uint8_t> bytes = located.first->Bytes(*located.second);
  bytes_read_ += bytes.size();
  return bytes;
}

absl::StatusOr<std::vector<float>> Checkpoint::ReadF32(std::string_view name,
                                                       std::span<const int64_t> expected_shape) {
  uint64_t n = 1;
  for (int64_t d : expected_shape) n *= static_cast<uint64_t>(d);
  std::vector<float> out(n);
  RETURN_IF_ERROR(ReadF32Into(name, expected_shape, out.data()));
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');  // keep the data section 8-byte aligned
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(StrCat(path, ": cannot write"));
  uint64_t len = h.size();
  char len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out.write(len_bytes, 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& t : tensors) {
    out.write(reinterpret_cast<const char*>(t.bytes.data()),
              static_cast<std::streamsize>(t.bytes.size()));
  }
  out.close();
  if (!out) return absl::InternalError(StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace pinmoe
