#include "coordinator/gpu/device_weights.h"

#include <cuda_runtime.h>

#include <cmath>

#include "common/status.h"
#include "common/str_cat.h"
#include "worker/gpu/cuda_check.h"
#include "worker/gpu/synthetic.h"

namespace pinmoe {

std::unique_ptr<DeviceWeights> DeviceWeights::FromCheckpoint(Checkpoint* checkpoint, int device) {
  auto w = std::unique_ptr<DeviceWeights>(new DeviceWeights());
  w->checkpoint_ = checkpoint;
  w->device_ = device;
  return w;
}

std::unique_ptr<DeviceWeights> DeviceWeights::Synthetic(uint64_t seed, int device) {
  auto w = std::unique_ptr<DeviceWeights>(new DeviceWeights());
  w->seed_ = seed;
  w->device_ = device;
  return w;
}

DeviceWeights::~DeviceWeights() {
  cudaSetDevice(device_);
  for (void* p : allocations_) cudaFree(p);
}

absl::StatusOr<void*> DeviceWeights::Allocate(size_t bytes) {
  CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    return absl::ResourceExhaustedError(StrCat("cannot allocate ", bytes, " bytes on cuda:", device_, " (",
                                               cudaGetErrorString(err), ")"));
  }
  allocations_.push_back(p);
  bytes_ += bytes;
  return p;
}

absl::StatusOr<void*> DeviceWeights::Scratch(size_t bytes) {
  ASSIGN_OR_RETURN(void* p, Allocate(bytes));
  CUDA_RETURN_IF_ERROR(cudaMemset(p, 0, bytes));
  return p;
}

absl::StatusOr<DeviceMatrix> DeviceWeights::Matrix(std::span<const std::string> names, std::span<const int64_t> rows,
                                                   int64_t cols) {
  DeviceMatrix m;
  m.cols = cols;
  for (int64_t r : rows) m.rows += r;
  if (checkpoint_ == nullptr) {
    m.bf16 = true;
    ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(m.rows) * cols * 2));
    size_t offset = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      const size_t n = static_cast<size_t>(rows[i]) * cols;
      // Uniform with variance 1/cols: each output keeps the scale of its inputs.
      CUDA_RETURN_IF_ERROR(LaunchFillUniformBf16(static_cast<__nv_bfloat16*>(p) + offset, n,
                                                 std::sqrt(3.0f / static_cast<float>(cols)), 0.f, seed_,
                                                 SyntheticKey(names[i]), nullptr));
      offset += n;
    }
    CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    m.data = p;
    return m;
  }
  m.bf16 = true;
  for (const auto& name : names) {
    ASSIGN_OR_RETURN(const TensorInfo* info, checkpoint_->Info(name));
    if (info->dtype != DType::kBF16) m.bf16 = false;
  }
  const size_t elem = m.bf16 ? 2 : 4;
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(m.rows) * cols * elem));
  size_t offset = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::vector<int64_t> shape = {rows[i], cols};
    const size_t bytes = static_cast<size_t>(rows[i]) * cols * elem;
    ASSIGN_OR_RETURN(const TensorInfo* info, checkpoint_->Info(names[i]));
    if (info->shape != shape) {
      return absl::InvalidArgumentError(StrCat(checkpoint_->dir(), ": tensor '", names[i], "' has shape ",
                                               ShapeString(info->shape), ", expected ", ShapeString(shape)));
    }
    if ((m.bf16 && info->dtype == DType::kBF16) || (!m.bf16 && info->dtype == DType::kF32)) {
      ASSIGN_OR_RETURN(std::span<const uint8_t> raw, checkpoint_->RawBytes(names[i]));
      CUDA_RETURN_IF_ERROR(cudaMemcpy(static_cast<uint8_t*>(p) + offset, raw.data(), bytes, cudaMemcpyHostToDevice));
    } else {
      ASSIGN_OR_RETURN(std::vector<float> wide, checkpoint_->ReadF32(names[i], shape));
      CUDA_RETURN_IF_ERROR(cudaMemcpy(static_cast<uint8_t*>(p) + offset, wide.data(), bytes, cudaMemcpyHostToDevice));
    }
    offset += bytes;
  }
  m.data = p;
  return m;
}

absl::StatusOr<float*> DeviceWeights::Vector(const std::string& name, int64_t n, float add) {
  ASSIGN_OR_RETURN(void* p, Allocate(static_cast<size_t>(n) * sizeof(float)));
  if (checkpoint_ == nullptr) {
    // Norm weights near one: 1 + small noise (as `add` + w for zero-centred ones).
    CUDA_RETURN_IF_ERROR(LaunchFillUniformF32(static_cast<float*>(p), static_cast<size_t>(n), 0.05f,
                                              add == 0.f ? 1.f : add, seed_, SyntheticKey(name), nullptr));
    CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    return static_cast<float*>(p);
  }
  ASSIGN_OR_RETURN(std::vector<float> v, checkpoint_->ReadF32(name, std::vector<int64_t>{n}));
  for (float& x : v) x += add;
  CUDA_RETURN_IF_ERROR(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return static_cast<float*>(p);
}

absl::StatusOr<float*> DeviceWeights::Small(const std::string& name, std::vector<int64_t> shape, float center) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  ASSIGN_OR_RETURN(void* p, Allocate(n * sizeof(float)));
  if (checkpoint_ == nullptr) {
    CUDA_RETURN_IF_ERROR(LaunchFillUniformF32(static_cast<float*>(p), n, 0.05f, center, seed_, SyntheticKey(name),
                                              nullptr));
    CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    return static_cast<float*>(p);
  }
  ASSIGN_OR_RETURN(std::vector<float> v, checkpoint_->ReadF32(name, shape));
  CUDA_RETURN_IF_ERROR(cudaMemcpy(p, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return static_cast<float*>(p);
}

}  // namespace pinmoe
