// Where a GPU model's dense weights come from: a checkpoint, uploaded in its own dtype (bf16 stays bf16,
// fp32 stays fp32, f16 is widened), or seeded synthetic bf16 values drawn on the device, so that
// full-size shapes can be measured without a download. Owns every allocation it hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "coordinator/gpu/linear.h"

namespace pinmoe {

class DeviceWeights {
 public:
  // `checkpoint` must outlive this object's loading calls.
  static std::unique_ptr<DeviceWeights> FromCheckpoint(Checkpoint* checkpoint, int device);
  static std::unique_ptr<DeviceWeights> Synthetic(uint64_t seed, int device);
  ~DeviceWeights();
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;

  // The named tensors ([rows[i], cols] each, checked) stacked by rows into one matrix: fused
  // projections cost one launch and one pass over their input. bf16 when every part is bf16.
  absl::StatusOr<DeviceMatrix> Matrix(std::span<const std::string> names, std::span<const int64_t> rows,
                                      int64_t cols);
  absl::StatusOr<DeviceMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    return Matrix(std::span<const std::string>(&name, 1), std::span<const int64_t>(&rows, 1), cols);
  }
  // A vector [n] in fp32 with `add` added to each element (zero-centred norms store w and mean 1 + w).
  absl::StatusOr<float*> Vector(const std::string& name, int64_t n, float add = 0.f);
  // A small fp32 tensor of the given shape (conv weights), flattened; synthetic values near `center`.
  absl::StatusOr<float*> Small(const std::string& name, std::vector<int64_t> shape, float center);
  // Device scratch owned here (zeroed).
  absl::StatusOr<void*> Scratch(size_t bytes);

  uint64_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  DeviceWeights() = default;
  absl::StatusOr<void*> Allocate(size_t bytes);

  Checkpoint* checkpoint_ = nullptr;  // null: synthetic
  uint64_t seed_ = 0;
  int device_ = 0;
  std::vector<void*> allocations_;
  uint64_t bytes_ = 0;
};

}  // namespace pinmoe
