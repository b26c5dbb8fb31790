// What the decode-time row kernels share (the dense GEMV in coordinator/gpu/linear.cu and the expert
// FFN in expert_ffn.cu): a block of up to kRowThreads threads splits a row's columns 16 bytes per thread,
// Dot16 multiplies one such piece with its activations, and the grid is at most one resident wave
// (ResidentGrid) that walks the rows. Measurements behind the layout: bench/NOTES.md.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "worker/gpu/counter_kernels.h"

namespace pinmoe {

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;

// Threads per block for rows of `chunks` 16-byte pieces: one piece each, whole warps, at most kRowThreads.
inline int RowThreads(int chunks) { return std::min(kRowThreads, (chunks + 31) / 32 * 32); }

// The sum of v over the warp (every lane gets it), in the butterfly order every row-dot kernel uses.
__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Dot product of 16 bytes of weights with the matching 8 (bf16) or 4 (fp32) activations (in global or
// shared memory, 16-byte aligned); the third argument picks the weight type.
__device__ __forceinline__ float Dot16(const uint4& p, const float* x, __nv_bfloat16) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&p);
  const float4 a = *reinterpret_cast<const float4*>(x), b = *reinterpret_cast<const float4*>(x + 4);
  const float2 f0 = __bfloat1622float2(h[0]), f1 = __bfloat1622float2(h[1]), f2 = __bfloat1622float2(h[2]),
               f3 = __bfloat1622float2(h[3]);
  float s = f0.x * a.x;
  s = fmaf(f0.y, a.y, s);
  s = fmaf(f1.x, a.z, s);
  s = fmaf(f1.y, a.w, s);
  s = fmaf(f2.x, b.x, s);
  s = fmaf(f2.y, b.y, s);
  s = fmaf(f3.x, b.z, s);
  return fmaf(f3.y, b.w, s);
}

__device__ __forceinline__ float Dot16(const uint4& p, const float* x, float) {
  const float4 w = *reinterpret_cast<const float4*>(&p);
  const float4 a = *reinterpret_cast<const float4*>(x);
  float s = w.x * a.x;
  s = fmaf(w.y, a.y, s);
  s = fmaf(w.z, a.z, s);
  return fmaf(w.w, a.w, s);
}

// The grid for `items` units of work: at most what the device holds of `kernel` at once, less the slots
// other processes' gates may hold (ResidentGridMargin), at least one block.
template <typename Kernel>
cudaError_t ResidentGrid(Kernel kernel, int threads, size_t smem, long items, int* grid) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  const long full = static_cast<long>(std::max(per_sm, 1)) * sms;
  const long wave = std::max<long>(sms, full - ResidentGridMargin());
  *grid = static_cast<int>(std::max(1L, std::min(items, wave)));
  return cudaSuccess;
}

}  // namespace pinmoe
