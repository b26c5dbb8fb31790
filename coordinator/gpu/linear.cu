#include "coordinator/gpu/linear.h"

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

// One warp per output row, all tokens at once: each 16-byte chunk of the row is loaded once.
template <typename W, int T>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(const W* __restrict__ w, const float* __restrict__ x, int rows, int cols, int tokens,
               float* __restrict__ y, bool accumulate) {
  constexpr int kElems = 16 / sizeof(W);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarps + warp;
  if (row >= rows) return;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<size_t>(row) * cols);
  float s[T];
#pragma unroll
  for (int t = 0; t < T; ++t) s[t] = 0.f;
  const int steps = cols / kElems;
#pragma unroll 2
  for (int st = lane; st < steps; st += 32) {
    float wf[kElems];
    Unpack(__ldg(wr + st), wf);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if (t >= tokens) break;
      const float4* xv = reinterpret_cast<const float4*>(x + static_cast<size_t>(t) * cols) + st * (kElems / 4);
#pragma unroll
      for (int e = 0; e < kElems / 4; ++e) {
        const float4 xx = __ldg(xv + e);
        s[t] = fmaf(wf[4 * e], xx.x, s[t]);
        s[t] = fmaf(wf[4 * e + 1], xx.y, s[t]);
        s[t] = fmaf(wf[4 * e + 2], xx.z, s[t]);
        s[t] = fmaf(wf[4 * e + 3], xx.w, s[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    if (t >= tokens) break;
    float v = s[t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) {
      float* dst = y + static_cast<size_t>(t) * rows + row;
      *dst = accumulate ? *dst + v : v;
    }
  }
}

template <typename W>
cudaError_t LaunchGemvTyped(const DeviceMatrix& m, const float* x, int tokens, float* y, bool acc,
                            cudaStream_t stream) {
  const W* w = static_cast<const W*>(m.data);
  const int rows = static_cast<int>(m.rows), cols = static_cast<int>(m.cols);
  const dim3 grid((rows + kWarps - 1) / kWarps), block(kWarps * 32);
  if (tokens <= 1) {
    GemvKernel<W, 1><<<grid, block, 0, stream>>>(w, x, rows, cols, tokens, y, acc);
  } else if (tokens <= 2) {
    GemvKernel<W, 2><<<grid, block, 0, stream>>>(w, x, rows, cols, tokens, y, acc);
  } else if (tokens <= 4) {
    GemvKernel<W, 4><<<grid, block, 0, stream>>>(w, x, rows, cols, tokens, y, acc);
  } else {
    GemvKernel<W, 8><<<grid, block, 0, stream>>>(w, x, rows, cols, tokens, y, acc);
  }
  return cudaGetLastError();
}

__global__ void ToBf16Kernel(const float* x, size_t n, __nv_bfloat16* y) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = __float2bfloat16(x[i]);
  }
}

}  // namespace

cudaError_t LaunchGemv(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate,
                       cudaStream_t stream) {
  if (tokens <= 0 || tokens > kGemvMaxTokens || w.rows <= 0 || w.rows > INT32_MAX || w.cols % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  return w.bf16 ? LaunchGemvTyped<__nv_bfloat16>(w, x, tokens, y, accumulate, stream)
                : LaunchGemvTyped<float>(w, x, tokens, y, accumulate, stream);
}

cudaError_t LaunchToBf16(const float* x, size_t n, __nv_bfloat16* y, cudaStream_t stream) {
  ToBf16Kernel<<<static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 4096)), 256, 0, stream>>>(x, n, y);
  return cudaGetLastError();
}

}  // namespace pinmoe
