#include "coordinator/gpu/linear.h"

#include "coordinator/gpu/route_topk.cuh"
#include "worker/gpu/pdl.cuh"

#include <algorithm>
#include <cstdint>

namespace pinmoe {
namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ void Unpack(const uint4& p, float (&w)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&p);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    w[2 * k] = f.x;
    w[2 * k + 1] = f.y;
  }
}

__device__ __forceinline__ void Unpack(const uint4& p, float (&w)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(&p);
  w[0] = f.x;
  w[1] = f.y;
  w[2] = f.z;
  w[3] = f.w;
}

static_assert(kGemvRouterMaxExperts == kRouteMaxExperts, "linear.h and route_topk.cuh disagree");
constexpr int kInFlight = 8;  // 16-byte weight loads each lane keeps in flight

// One warp per output row, all tokens at once: each 16-byte chunk of the row is loaded once, kInFlight
// chunks in flight per lane. With kNorm, the block first RMS-normalises the tokens' rows of x (weight
// nw) into shared memory, which spares a launch and a dependent step per norm; block 0 also writes the
// normalised rows to normed_out when it is set (the experts' input).
template <typename W, int T, bool kNorm, bool kTopK>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const W* __restrict__ w, const float* __restrict__ x, int rows, int cols, int tokens,
               float* __restrict__ y, bool accumulate, const float* __restrict__ nw, float eps,
               float* __restrict__ normed_out, GemvTopK topk) {
  constexpr int kElems = 16 / sizeof(W);
  extern __shared__ float xs[];  // kNorm: [tokens, cols]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + warp;
  const int steps = cols / kElems;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<size_t>(min(row, rows - 1)) * cols);
  // The weights do not depend on the kernels before this one: the first kInFlight chunks of the row are
  // requested before waiting for them (and before the norm prologue), so that DRAM latency overlaps the
  // previous kernel's tail and the prologue.
  uint4 wv[kInFlight];
#pragma unroll
  for (int u = 0; u < kInFlight; ++u) {
    const int st = lane + 32 * u;
    if (row < rows && st < steps) wv[u] = __ldg(wr + st);
  }
  PdlWait();
  // Let the next kernel be scheduled early only when this grid fits in about one wave: otherwise its
  // waiting blocks would take the places of this grid's later ones (lm_head has ~19k blocks).
  if (gridDim.x <= 1024) PdlTrigger();
  if constexpr (kNorm) {
    __shared__ float red[kWarps];
    for (int t = 0; t < tokens; ++t) {
      const float* xr = x + static_cast<size_t>(t) * cols;
      float ss = 0.f;
      for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += xr[i] * xr[i];
      for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
      if (lane == 0) red[warp] = ss;
      __syncthreads();
      float total = 0.f;
      for (int i = 0; i < kWarps; ++i) total += red[i];
      const float inv = 1.0f / sqrtf(total / static_cast<float>(cols) + eps);
      for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = nw[i] * (xr[i] * inv);
        xs[static_cast<size_t>(t) * cols + i] = v;
        if (blockIdx.x == 0 && normed_out != nullptr) normed_out[static_cast<size_t>(t) * cols + i] = v;
      }
      __syncthreads();  // also keeps red[] stable until every warp has read it
    }
  }
  const float* xsrc = kNorm ? xs : x;
  if (!kTopK && row >= rows) return;
  const bool active = row < rows;
  float s[T];
#pragma unroll
  for (int t = 0; t < T; ++t) s[t] = 0.f;
  for (int st0 = lane; active;) {
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int st = st0 + 32 * u;
      if (st >= steps) break;
      float wf[kElems];
      Unpack(wv[u], wf);
#pragma unroll
      for (int t = 0; t < T; ++t) {
        if (t >= tokens) break;
        const float4* xv = reinterpret_cast<const float4*>(xsrc + static_cast<size_t>(t) * cols) + st * (kElems / 4);
#pragma unroll
        for (int e = 0; e < kElems / 4; ++e) {
          const float4 xx = kNorm ? xv[e] : __ldg(xv + e);
          s[t] = fmaf(wf[4 * e], xx.x, s[t]);
          s[t] = fmaf(wf[4 * e + 1], xx.y, s[t]);
          s[t] = fmaf(wf[4 * e + 2], xx.z, s[t]);
          s[t] = fmaf(wf[4 * e + 3], xx.w, s[t]);
        }
      }
    }
    st0 += 32 * kInFlight;
    if (st0 >= steps) break;
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int st = st0 + 32 * u;
      if (st < steps) wv[u] = __ldg(wr + st);
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    if (t >= tokens) break;
    float v = s[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && active) {
      float* dst = y + static_cast<size_t>(t) * rows + row;
      *dst = accumulate ? *dst + v : v;
    }
  }
  if constexpr (kTopK) {
    // The router's epilogue: the last block to finish routes every token (one warp each) from the
    // logits all blocks wrote, sparing a kernel and a dependent launch per MoE layer.
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(topk.blocks_done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last) {
      __threadfence();
      if (warp < tokens) {
        WarpRouteTopK(y + static_cast<size_t>(warp) * rows, rows, topk.top_k, topk.norm,
                      topk.ids + static_cast<size_t>(warp) * topk.top_k,
                      topk.weights + static_cast<size_t>(warp) * topk.top_k);
      }
      if (threadIdx.x == 0) *topk.blocks_done = 0u;
    }
  }
}

template <typename W, int T, bool kNorm, bool kTopK>
cudaError_t LaunchGemvVariant(const DeviceMatrix& m, const float* x, int tokens, float* y, bool acc,
                              const GemvNorm* norm, const GemvTopK* topk, cudaStream_t stream) {
  const W* w = static_cast<const W*>(m.data);
  const int rows = static_cast<int>(m.rows), cols = static_cast<int>(m.cols);
  const dim3 grid((rows + kWarps - 1) / kWarps), block(kWarps * 32);
  const size_t smem = kNorm ? static_cast<size_t>(tokens) * cols * sizeof(float) : 0;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(GemvKernel<W, T, kNorm, kTopK>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  return LaunchPdl(GemvKernel<W, T, kNorm, kTopK>, grid, block, smem, stream, w, x, rows, cols, tokens, y, acc,
                   kNorm ? norm->weight : static_cast<const float*>(nullptr), kNorm ? norm->eps : 0.f,
                   kNorm ? norm->normed_out : static_cast<float*>(nullptr), kTopK ? *topk : GemvTopK{});
}

template <typename W, int T>
cudaError_t LaunchGemvT(const DeviceMatrix& m, const float* x, int tokens, float* y, bool acc, const GemvNorm* norm,
                        const GemvTopK* topk, cudaStream_t stream) {
  if (norm == nullptr) return LaunchGemvVariant<W, T, false, false>(m, x, tokens, y, acc, norm, topk, stream);
  if (topk == nullptr) return LaunchGemvVariant<W, T, true, false>(m, x, tokens, y, acc, norm, topk, stream);
  return LaunchGemvVariant<W, T, true, true>(m, x, tokens, y, acc, norm, topk, stream);
}

template <typename W>
cudaError_t LaunchGemvTyped(const DeviceMatrix& m, const float* x, int tokens, float* y, bool acc,
                            const GemvNorm* norm, const GemvTopK* topk, cudaStream_t stream) {
  if (tokens <= 1) return LaunchGemvT<W, 1>(m, x, tokens, y, acc, norm, topk, stream);
  if (tokens <= 2) return LaunchGemvT<W, 2>(m, x, tokens, y, acc, norm, topk, stream);
  if (tokens <= 4) return LaunchGemvT<W, 4>(m, x, tokens, y, acc, norm, topk, stream);
  return LaunchGemvT<W, 8>(m, x, tokens, y, acc, norm, topk, stream);
}

__global__ void ToBf16Kernel(const float* x, size_t n, __nv_bfloat16* y) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = __float2bfloat16(x[i]);
  }
}

}  // namespace

cudaError_t LaunchGemv(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate,
                       const GemvNorm* norm, cudaStream_t stream, const GemvTopK* topk) {
  if (tokens <= 0 || tokens > kGemvMaxTokens || w.rows <= 0 || w.rows > INT32_MAX || w.cols % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  if (topk != nullptr && (norm == nullptr || w.rows > kGemvRouterMaxExperts || topk->top_k > w.rows ||
                          topk->blocks_done == nullptr || accumulate)) {
    return cudaErrorInvalidValue;
  }
  return w.bf16 ? LaunchGemvTyped<__nv_bfloat16>(w, x, tokens, y, accumulate, norm, topk, stream)
                : LaunchGemvTyped<float>(w, x, tokens, y, accumulate, norm, topk, stream);
}

cudaError_t LaunchToBf16(const float* x, size_t n, __nv_bfloat16* y, cudaStream_t stream) {
  ToBf16Kernel<<<static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 4096)), 256, 0, stream>>>(x, n, y);
  return cudaGetLastError();
}

}  // namespace pinmoe
