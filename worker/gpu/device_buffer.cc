#include "worker/gpu/device_buffer.h"

#include <cuda_runtime.h>

#include <cstring>

#include "common/status.h"
#include "worker/gpu/cuda_check.h"

namespace pinmoe {

namespace {
constexpr uint64_t kAlignment = 2ull << 20;
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Create(int device, uint64_t size_bytes) {
  auto b = std::unique_ptr<DeviceBuffer>(new DeviceBuffer());
  b->device_ = device;
  b->size_ = (size_bytes + kAlignment - 1) / kAlignment * kAlignment;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaMalloc(&p, b->size_));
  b->data_ = static_cast<uint8_t*>(p);
  b->owner_ = true;
  CUDA_RETURN_IF_ERROR(cudaMemset(p, 0, b->size_));
  cudaIpcMemHandle_t h;
  CUDA_RETURN_IF_ERROR(cudaIpcGetMemHandle(&h, p));
  b->handle_.assign(reinterpret_cast<const char*>(&h), sizeof(h));
  return b;
}

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Open(int device, const std::string& ipc_handle,
                                                                 uint64_t size_bytes) {
  if (ipc_handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(StrCat("CUDA IPC handle of ", ipc_handle.size(), " bytes, expected ",
                                             sizeof(cudaIpcMemHandle_t)));
  }
  auto b = std::unique_ptr<DeviceBuffer>(new DeviceBuffer());
  b->device_ = device;
  b->size_ = size_bytes;
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaIpcMemHandle_t h;
  std::memcpy(&h, ipc_handle.data(), sizeof(h));
  void* p = nullptr;
  CUDA_RETURN_IF_ERROR(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess));
  b->data_ = static_cast<uint8_t*>(p);
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ == nullptr) return;
  cudaSetDevice(device_);
  if (owner_) {
    cudaFree(data_);
  } else {
    cudaIpcCloseMemHandle(data_);
  }
}

}  // namespace pinmoe
