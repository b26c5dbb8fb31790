#include "worker/gpu/expert_ffn.h"

#include "worker/gpu/pdl.cuh"

namespace pinmoe {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Dot product of one bf16 row with an fp32 vector in shared memory; 8 elements (16 bytes) per lane per
// step, the whole warp covering 256 elements per step.
__device__ __forceinline__ float RowDot(const __nv_bfloat16* __restrict__ row, const float* __restrict__ v,
                                        int n, int lane) {
  float acc = 0.f;
  const uint4* r = reinterpret_cast<const uint4*>(row);
  const int steps = n / 8;
#pragma unroll 4
  for (int s = lane; s < steps; s += 32) {
    const uint4 packed = __ldg(r + s);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&packed);
    const float* vv = v + s * 8;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(h[k]);
      acc = fmaf(f.x, vv[2 * k], acc);
      acc = fmaf(f.y, vv[2 * k + 1], acc);
    }
  }
  return WarpSum(acc);
}

// The fp32-weight variant: 4 elements (16 bytes) per lane per step.
__device__ __forceinline__ float RowDot(const float* __restrict__ row, const float* __restrict__ v, int n,
                                        int lane) {
  float acc = 0.f;
  const float4* r = reinterpret_cast<const float4*>(row);
  const int steps = n / 4;
#pragma unroll 4
  for (int s = lane; s < steps; s += 32) {
    const float4 w = __ldg(r + s);
    const float* vv = v + s * 4;
    acc = fmaf(w.x, vv[0], acc);
    acc = fmaf(w.y, vv[1], acc);
    acc = fmaf(w.z, vv[2], acc);
    acc = fmaf(w.w, vv[3], acc);
  }
  return WarpSum(acc);
}

__device__ __forceinline__ float Silu(float x) { return x / (1.f + __expf(-x)); }

// grid: (ceil(inter / kRowsPerBlock), tokens * top_k)
template <typename W>
__global__ void __launch_bounds__(kThreads) GateUpKernel(ExpertFfnArgs a) {
  PdlWait();
  PdlTrigger();
  const int pair = blockIdx.y;
  const int e = a.routing[pair];
  if (e < 0 || e >= a.num_experts) return;
  const GpuExpert ex = a.experts[e];
  if (ex.gate == nullptr) return;
  extern __shared__ float xs[];
  const float* x = a.x + static_cast<size_t>(pair / a.top_k) * a.hidden;
  for (int i = threadIdx.x; i < a.hidden; i += kThreads) xs[i] = x[i];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = blockIdx.x * kRowsPerBlock + warp * kRowsPerWarp + r;
    if (row >= a.inter) break;
    const float g = RowDot(static_cast<const W*>(ex.gate) + static_cast<size_t>(row) * a.hidden, xs, a.hidden, lane);
    const float u = RowDot(static_cast<const W*>(ex.up) + static_cast<size_t>(row) * a.hidden, xs, a.hidden, lane);
    if (lane == 0) a.act[static_cast<size_t>(pair) * a.inter + row] = Silu(g) * u;
  }
}

// grid: (ceil(hidden / kRowsPerBlock), tokens * top_k)
template <typename W>
__global__ void __launch_bounds__(kThreads) DownKernel(ExpertFfnArgs a) {
  const int pair = blockIdx.y;
  // The routing and the expert are known from before GateUp: pull this block's rows of the down
  // projection toward L2 while GateUp finishes, then wait for its activations.
  {
    const int e = a.routing[pair];
    if (e >= 0 && e < a.num_experts && a.experts[e].down != nullptr) {
      const int row0 = blockIdx.x * kRowsPerBlock;
      const int n = min(kRowsPerBlock, a.hidden - row0);
      if (n > 0) {
        PrefetchL2(static_cast<const W*>(a.experts[e].down) + static_cast<size_t>(row0) * a.inter,
                   static_cast<size_t>(n) * a.inter * sizeof(W), threadIdx.x, kThreads);
      }
    }
  }
  PdlWait();
  PdlTrigger();
  const int e = a.routing[pair];
  if (e < 0 || e >= a.num_experts) return;
  const GpuExpert ex = a.experts[e];
  if (ex.down == nullptr) return;
  extern __shared__ float acts[];
  const float* act = a.act + static_cast<size_t>(pair) * a.inter;
  for (int i = threadIdx.x; i < a.inter; i += kThreads) acts[i] = act[i];
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = blockIdx.x * kRowsPerBlock + warp * kRowsPerWarp + r;
    if (row >= a.hidden) break;
    const float y = RowDot(static_cast<const W*>(ex.down) + static_cast<size_t>(row) * a.inter, acts, a.inter, lane);
    if (lane == 0) a.out[static_cast<size_t>(pair) * a.hidden + row] = y;
  }
}


template <typename W>
cudaError_t Launch(const ExpertFfnArgs& a, cudaStream_t stream) {
  const int pairs = a.tokens * a.top_k;
  const size_t smem_x = static_cast<size_t>(a.hidden) * sizeof(float);
  const size_t smem_act = static_cast<size_t>(a.inter) * sizeof(float);
  if (smem_x > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(GateUpKernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_x));
    if (err != cudaSuccess) return err;
  }
  if (smem_act > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(DownKernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem_act));
    if (err != cudaSuccess) return err;
  }
  dim3 g1((a.inter + kRowsPerBlock - 1) / kRowsPerBlock, pairs);
  cudaError_t err = LaunchPdl(GateUpKernel<W>, g1, dim3(kThreads), smem_x, stream, a);
  if (err != cudaSuccess) return err;
  dim3 g2((a.hidden + kRowsPerBlock - 1) / kRowsPerBlock, pairs);
  return LaunchPdl(DownKernel<W>, g2, dim3(kThreads), smem_act, stream, a);
}

}  // namespace

cudaError_t LaunchExpertFfnDecode(const ExpertFfnArgs& a, cudaStream_t stream) {
  if (a.hidden % 8 != 0 || a.inter % 8 != 0 || a.tokens <= 0 || a.top_k <= 0) return cudaErrorInvalidValue;
  if (a.tokens * a.top_k > 65535) return cudaErrorInvalidValue;  // grid.y limit; callers split larger batches
  return a.fp32_weights ? Launch<float>(a, stream) : Launch<__nv_bfloat16>(a, stream);
}

}  // namespace pinmoe
