// Safetensors files and hub checkpoints (a single model.safetensors, or shards named by
// model.safetensors.index.json), memory-mapped so that a process touches only the bytes of the tensors it
// reads: a worker pages in its experts and nothing else.
//
// Every header is untrusted: its size is capped, each tensor's byte range must lie inside the file and match
// its dtype and shape (overflow-checked), ranges must not overlap, and every error names the file and the
// tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace pinmoe {

// Safetensors' own limit on the JSON header.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets inside the data section (after the header)
  uint64_t end = 0;
  uint64_t NumElements() const;
};

std::string ShapeString(std::span<const int64_t> shape);

// Parses and validates a header's JSON against a data section of `data_size` bytes. `label` names the
// source in errors. Tensors come back sorted by begin offset.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(std::string_view header_json,
                                                               uint64_t data_size,
                                                               std::string_view label);

// A read-only memory map of one file.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return map_->path(); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* Find(std::string_view name) const;
  // The tensor's bytes inside the map (already bounds-checked at Open).
  std::span<const uint8_t> Bytes(const TensorInfo& info) const;

 private:
  std::unique_ptr<MappedFile> map_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// A model directory's weights: shards are opened (and their headers validated) on first use.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  // Every tensor name the checkpoint declares (from the index, or the single file's header).
  std::vector<std::string> TensorNames() const;
  bool Has(std::string_view name) const;

  // Metadata without reading data: dtype and shape.
  absl::StatusOr<const TensorInfo*> Info(std::string_view name);

  // Reads a float tensor widened to fp32, after checking that its shape is `expected_shape`.
  absl::StatusOr<std::vector<float>> ReadF32(std::string_view name,
                                             std::span<const int64_t> expected_shape);
  absl::Status ReadF32Into(std::string_view name, std::span<const int64_t> expected_shape,
                           float* dst);
  // A tensor's bytes as stored (valid while this object lives); counted in bytes_read().
  absl::StatusOr<std::span<const uint8_t>> RawBytes(std::string_view name);
  // Bytes of tensor data read so far through this object (what a worker touched).
  uint64_t bytes_read() const { return bytes_read_; }
  const std::string& dir() const { return dir_; }

 private:
  absl::StatusOr<SafetensorsFile*> FileFor(std::string_view name, std::string* file_name);
  // The open shard holding `name` and the tensor's header entry.
  absl::StatusOr<std::pair<SafetensorsFile*, const TensorInfo*>> Locate(std::string_view name);

  std::string dir_;
  std::map<std::string, std::string, std::less<>> weight_map_;  // tensor -> shard file name
  std::map<std::string, std::unique_ptr<SafetensorsFile>, std::less<>> open_files_;
  uint64_t bytes_read_ = 0;
};

// Writes a safetensors file (used by the demo-model generator and by tests that forge bad files).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace pinmoe
