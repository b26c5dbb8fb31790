#include "worker/gpu/synthetic.h"

#include <algorithm>

namespace pinmoe {
namespace {

__device__ __forceinline__ float Uniform(uint64_t seed, uint64_t key, size_t i) {
  uint64_t z = seed ^ (key * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(i) * 0xD1B54A32D192ED03ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

template <typename T>
__global__ void FillKernel(T* dst, size_t n, float scale, float offset, uint64_t seed, uint64_t key) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = offset + scale * Uniform(seed, key, i);
    if constexpr (sizeof(T) == 2) {
      dst[i] = __float2bfloat16(v);
    } else {
      dst[i] = v;
    }
  }
}

template <typename T>
cudaError_t Fill(T* dst, size_t n, float scale, float offset, uint64_t seed, uint64_t key, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 8192));
  FillKernel<T><<<blocks, 256, 0, stream>>>(dst, n, scale, offset, seed, key);
  return cudaGetLastError();
}

}  // namespace

uint64_t SyntheticKey(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

cudaError_t LaunchFillUniformBf16(__nv_bfloat16* dst, size_t n, float scale, float offset, uint64_t seed,
                                  uint64_t key, cudaStream_t stream) {
  return Fill(dst, n, scale, offset, seed, key, stream);
}

cudaError_t LaunchFillUniformF32(float* dst, size_t n, float scale, float offset, uint64_t seed, uint64_t key,
                                 cudaStream_t stream) {
  return Fill(dst, n, scale, offset, seed, key, stream);
}

}  // namespace pinmoe
