// Seeded synthetic weights drawn on the device, for benchmarks of full-size shapes without a download:
// value i of a tensor is a pure function of (seed, tensor key, i), so every process that draws the same
// tensor gets the same bytes whichever device or split it has.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>

namespace pinmoe {

// A stable 64-bit key for a tensor name (FNV-1a).
uint64_t SyntheticKey(std::string_view name);

// dst[i] = offset + scale * u, u uniform in [-1, 1).
cudaError_t LaunchFillUniformBf16(__nv_bfloat16* dst, size_t n, float scale, float offset, uint64_t seed,
                                  uint64_t key, cudaStream_t stream);
cudaError_t LaunchFillUniformF32(float* dst, size_t n, float scale, float offset, uint64_t seed, uint64_t key,
                                 cudaStream_t stream);

}  // namespace pinmoe
