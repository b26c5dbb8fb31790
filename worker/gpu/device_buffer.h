// Device memory that the coordinator owns and workers import through CUDA IPC handles: the GPU side of
// the data plane. The coordinator allocates (2 MiB multiples, as the design asks) and exports once;
// a worker opens the handle once, at assignment (opening costs ~0.1 ms), with peer access enabled
// lazily when its GPU is not the coordinator's. Closing an import never frees the owner's memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace pinmoe {

class DeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Create(int device, uint64_t size_bytes);
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Open(int device, const std::string& ipc_handle,
                                                            uint64_t size_bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // The 64 opaque bytes of cudaIpcMemHandle_t (owner side).
  std::string ipc_handle() const { return handle_; }
  uint8_t* data() { return data_; }
  uint64_t size() const { return size_; }
  int device() const { return device_; }

 private:
  DeviceBuffer() = default;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int device_ = 0;
  bool owner_ = false;
  std::string handle_;
};

}  // namespace pinmoe
