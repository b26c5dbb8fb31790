// Device side of the KV cache's element types (KvCacheDtype, coordinator/kv_cache_dtype.h): fp32, or bf16
// (half the bytes that long contexts read; values rounded to nearest even as they are stored). Kernels
// read elements widened to fp32 and compute in fp32 either way.
#pragma once

#include <cuda_bf16.h>

#include <type_traits>

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

}  // namespace pinmoe
