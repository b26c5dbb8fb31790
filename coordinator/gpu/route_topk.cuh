// Softmax top-k routing for one token by one warp, everything in registers: softmax over at most
// kRouteMaxExperts logits, then top_k rounds of a warp arg-max (ties to the lower index), renormalised
// when `norm`. Shared by the routing kernel and the router GEMV's fused epilogue.
#pragma once

#include <cfloat>
#include <cstdint>

namespace pinmoe {

constexpr int kTopKPerLane = 16;
constexpr int kRouteMaxExperts = 32 * kTopKPerLane;

// P logits a lane (expert j * 32 + lane in p[j]): softmax, then top_k rounds of the warp's highest
// probability, the lower expert index on ties. A round is one warp max (redux.sync over the
// probabilities' bits, which order like the values: they are >= 0) and one warp min over the indices
// that hold it, not a butterfly of five dependent (value, index) shuffle pairs; P is the fewest that
// cover the experts (4 for 128), so a lane's loops skip the 12 of 16 slots that hold no expert.
// kGlobal: `logits` in global memory, possibly written by other blocks of the grid (read through L2,
// ld.cg); else in shared memory.
template <int P, bool kGlobal = true>
__device__ __forceinline__ void WarpRouteTopKOf(const float* logits, int num_experts, int top_k, bool norm,
                                                int32_t* ids, float* weights) {
  const int lane = threadIdx.x % 32;
  float p[P];
  float mx = -FLT_MAX;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int e = j * 32 + lane;
    p[j] = e >= num_experts ? -FLT_MAX : kGlobal ? __ldcg(logits + e) : logits[e];
    mx = fmaxf(mx, p[j]);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < num_experts ? expf(p[j] - mx) : 0.f;
    sum += p[j];
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int e = j * 32 + lane;
    p[j] = e < num_experts ? p[j] / sum : -1.f;  // -1: no such expert; -2 below: taken
  }
  float picked = 0.f;
  for (int k = 0; k < top_k; ++k) {
    float bv = -2.f;
    int bj = 0;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      if (p[j] > bv) {  // j ascending: the lower index wins ties within the lane
        bv = p[j];
        bj = j;
      }
    }
    // Keys: a probability's bits + 1 (0 for none), so the warp's highest key is its highest probability.
    const unsigned int key = bv >= 0.f ? __float_as_uint(bv) + 1u : 0u;
    const unsigned int top = __reduce_max_sync(0xffffffffu, key);
    const unsigned int bi = __reduce_min_sync(0xffffffffu, key == top ? static_cast<unsigned int>(bj * 32 + lane)
                                                                      : 0xffffffffu);
    const float value = __uint_as_float(top - 1u);
#pragma unroll
    for (int j = 0; j < P; ++j) {
      if (static_cast<unsigned int>(j * 32 + lane) == bi) p[j] = -2.f;  // taken
    }
    picked += value;
    if (lane == 0) {
      ids[k] = static_cast<int32_t>(bi);
      weights[k] = value;
    }
  }
  if (lane == 0 && norm) {
    for (int k = 0; k < top_k; ++k) weights[k] /= picked;
  }
}

// Call with a whole warp; at most kRouteMaxExperts experts, top_k <= num_experts. `logits` may have
// been written by other blocks of the same grid: it is read through L2 (ld.cg).
__device__ __forceinline__ void WarpRouteTopK(const float* logits, int num_experts, int top_k, bool norm,
                                              int32_t* ids, float* weights) {
  if (num_experts <= 32) {
    WarpRouteTopKOf<1>(logits, num_experts, top_k, norm, ids, weights);
  } else if (num_experts <= 128) {
    WarpRouteTopKOf<4>(logits, num_experts, top_k, norm, ids, weights);
  } else if (num_experts <= 256) {
    WarpRouteTopKOf<8>(logits, num_experts, top_k, norm, ids, weights);
  } else {
    WarpRouteTopKOf<kTopKPerLane>(logits, num_experts, top_k, norm, ids, weights);
  }
}

}  // namespace pinmoe
