// Softmax top-k routing for one token by one warp, everything in registers: softmax over at most
// kRouteMaxExperts logits, then top_k rounds of a warp arg-max (ties to the lower index), renormalised
// when `norm`. Shared by the routing kernel and the router GEMV's fused epilogue.
#pragma once

#include <cfloat>
#include <cstdint>

namespace pinmoe {

constexpr int kTopKPerLane = 16;
constexpr int kRouteMaxExperts = 32 * kTopKPerLane;

// Call with a whole warp. `logits` may have been written by other blocks of the same grid: it is read
// through L2 (ld.cg).
__device__ __forceinline__ void WarpRouteTopK(const float* logits, int num_experts, int top_k, bool norm,
                                              int32_t* ids, float* weights) {
  const int lane = threadIdx.x % 32;
  float p[kTopKPerLane];
  float mx = -FLT_MAX;
#pragma unroll
  for (int j = 0; j < kTopKPerLane; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < num_experts ? __ldcg(logits + e) : -FLT_MAX;
    mx = fmaxf(mx, p[j]);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kTopKPerLane; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < num_experts ? expf(p[j] - mx) : 0.f;
    sum += p[j];
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
  for (int j = 0; j < kTopKPerLane; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < num_experts ? p[j] / sum : -1.f;
  }
  float picked = 0.f;
  for (int k = 0; k < top_k; ++k) {
    float bv = -2.f;
    int bi = num_experts;
#pragma unroll
    for (int j = 0; j < kTopKPerLane; ++j) {
      if (p[j] > bv) {  // j ascending: the lower index wins ties within the lane
        bv = p[j];
        bi = j * 32 + lane;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
      }
    }
#pragma unroll
    for (int j = 0; j < kTopKPerLane; ++j) {
      if (j * 32 + lane == bi) p[j] = -2.f;  // taken
    }
    picked += bv;
    if (lane == 0) {
      ids[k] = bi;
      weights[k] = bv;
    }
  }
  if (lane == 0 && norm) {
    for (int k = 0; k < top_k; ++k) weights[k] /= picked;
  }
}

}  // namespace pinmoe
