// DeviceBuffer in a build without CUDA: nothing can be allocated or imported, and saying so is the
// whole implementation (the CUDA build compiles device_buffer.cc instead).
#include "worker/gpu/device_buffer.h"

namespace pinmoe {

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Create(int device, uint64_t size_bytes) {
  return absl::UnimplementedError("this build of pinmoe has no CUDA");
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Open(int device, const std::string& ipc_handle,
                                                                 uint64_t size_bytes) {
  return absl::UnimplementedError("this build of pinmoe has no CUDA");
}

DeviceBuffer::~DeviceBuffer() = default;

}  // namespace pinmoe
