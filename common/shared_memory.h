// Activation buffers that the coordinator owns and workers map: the CPU stand-in for CUDA IPC handles.
// The coordinator creates each buffer once (POSIX shared memory, 0600, a random name) and unlinks it when
// it goes; a worker opens it by name, checks its size, and reaches it only through bounds-checked slices.
// A worker dying never invalidates the coordinator's memory.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace pinmoe {

// Buffers are whole multiples of this, as CUDA IPC exports will be.
inline constexpr uint64_t kSharedBufferAlignment = 2ull << 20;

class SharedMemory {
 public:
  // Creates a new segment; the object owns the name and unlinks it on destruction.
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Create(const std::string& name_prefix,
                                                              uint64_t size_bytes);
  // Maps an existing segment, which must be exactly `size_bytes` long.
  static absl::StatusOr<std::unique_ptr<SharedMemory>> Open(const std::string& name,
                                                            uint64_t size_bytes);
  ~SharedMemory();
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  const std::string& name() const { return name_; }
  uint64_t size() const { return size_; }
  uint8_t* data() { return data_; }

  // [offset, offset + length) inside the buffer, or an error naming the buffer.
  absl::StatusOr<std::span<uint8_t>> Slice(uint64_t offset, uint64_t length);

 private:
  SharedMemory() = default;
  std::string name_;
  uint64_t size_ = 0;
  uint8_t* data_ = nullptr;
  bool owner_ = false;
};

}  // namespace pinmoe
