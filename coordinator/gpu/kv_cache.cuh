// Device side of the KV cache's element types (KvCacheDtype, coordinator/kv_cache_dtype.h): fp32, or bf16
// (half the bytes that long contexts read; values rounded to nearest even as they are stored). Kernels
// read elements widened to fp32 and compute in fp32 either way.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

#include "worker/gpu/pdl.cuh"

namespace pinmoe {

__device__ __forceinline__ float CacheLoad(const float* p) { return *p; }
__device__ __forceinline__ float CacheLoad(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void CacheStore(float* p, float x) { *p = x; }
__device__ __forceinline__ void CacheStore(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

// x as the cache of element type C holds it (for a value that is also read from shared memory).
template <typename C>
__device__ __forceinline__ float CacheRound(float x) {
  if constexpr (std::is_same_v<C, float>) {
    return x;
  } else {
    return __bfloat162float(__float2bfloat16(x));
  }
}

// Four consecutive elements, widened: p 16-byte aligned for fp32, 8-byte for bf16.
__device__ __forceinline__ float4 CacheLoad4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 CacheLoad4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  __nv_bfloat162 lo, hi;
  memcpy(&lo, &raw.x, sizeof(lo));
  memcpy(&hi, &raw.y, sizeof(hi));
  const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
  return make_float4(a.x, a.y, b.x, b.y);
}

// Eight consecutive elements, widened, in one 16-byte load: p 16-byte aligned. A lane that walks its own
// row (the decode attention's score passes: the warp's 32 rows in 32 different lines) pays per load
// instruction, so bf16 rows take half the instructions of fp32 ones.
__device__ __forceinline__ void CacheLoad8(const float* p, float4& a, float4& b) {
  a = reinterpret_cast<const float4*>(p)[0];
  b = reinterpret_cast<const float4*>(p)[1];
}
__device__ __forceinline__ void CacheLoad8(const __nv_bfloat16* p, float4& a, float4& b) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  __nv_bfloat162 h[4];
  memcpy(h, &raw, sizeof(raw));
  const float2 x = __bfloat1622float2(h[0]), y = __bfloat1622float2(h[1]);
  const float2 z = __bfloat1622float2(h[2]), w = __bfloat1622float2(h[3]);
  a = make_float4(x.x, x.y, y.x, y.y);
  b = make_float4(z.x, z.y, w.x, w.y);
}

// Asks L2 for rows [begin, end) of a cache (row r at rows + r * stride, `elems` elements from a 128-byte
// line's start): this thread asks for lines first, first + step, ... of them (a block or a warp divides
// them). For reads that do not depend on the kernels just before: issued before the programmatic wait,
// the loads overlap that kernel's tail. A hint: nothing is read.
template <typename C>
__device__ void PrefetchRowsL2(const C* rows, size_t stride, int begin, int end, int elems, int first, int step) {
  constexpr int kLine = 128;
  const int lines = (elems * static_cast<int>(sizeof(C)) + kLine - 1) / kLine;
  const int n = max(0, end - begin) * lines;
  for (int i = first; i < n; i += step) {
    const char* line = reinterpret_cast<const char*>(rows + (begin + i / lines) * stride) + (i % lines) * kLine;
    PrefetchLineL2(line);
  }
}

}  // namespace pinmoe
