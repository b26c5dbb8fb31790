#include "coordinator/gpu/linear.h"

#include <cooperative_groups.h>

#include "coordinator/gpu/route_topk.cuh"
#include "worker/gpu/counter_store.cuh"
#include "worker/gpu/pdl.cuh"
#include "worker/gpu/row_dot.cuh"

#include <algorithm>
#include <cstdint>

namespace pinmoe {
namespace {

constexpr int kGroupRows = 4;  // rows per block and step: the loads each thread keeps in flight
constexpr unsigned int kBlockStarted = 1u << 16;  // a router block's start in its blocks_done counter

static_assert(kGemvRouterMaxExperts == kRouteMaxExperts, "linear.h and route_topk.cuh disagree");

// kNorm's start (GemvKernel, RouterClusterKernel), by the whole block: xs[t, cols] = x * norm weight in
// shared memory, x^2 summed on the way; returns the per-token 1/rms (shared memory, [T]), which the
// finished sums are scaled by. Block 0 also writes the normalised rows to normed_out when it is set (the
// experts' input), as weight * (x * 1/rms), the order the CPU path uses.
template <int T>
__device__ const float* StageNormed(const float* __restrict__ x, const float* __restrict__ nw, int cols, int tokens,
                                    float eps, float* __restrict__ normed_out, float* xs) {
  __shared__ float part[kRowWarps][T];
  __shared__ float scale[T];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float ss[T];
#pragma unroll
  for (int t = 0; t < T; ++t) ss[t] = 0.f;
#pragma unroll
  for (int t = 0; t < T; ++t) {
    if (t >= tokens) break;
    for (int i = threadIdx.x * 4; i < cols; i += blockDim.x * 4) {
      const float4 xv = *reinterpret_cast<const float4*>(x + static_cast<size_t>(t) * cols + i);
      const float4 wv = __ldg(reinterpret_cast<const float4*>(nw + i));
      ss[t] = fmaf(xv.x, xv.x, ss[t]);
      ss[t] = fmaf(xv.y, xv.y, ss[t]);
      ss[t] = fmaf(xv.z, xv.z, ss[t]);
      ss[t] = fmaf(xv.w, xv.w, ss[t]);
      *reinterpret_cast<float4*>(xs + static_cast<size_t>(t) * cols + i) =
          make_float4(xv.x * wv.x, xv.y * wv.y, xv.z * wv.z, xv.w * wv.w);
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    ss[t] = WarpSum(ss[t]);
    if (lane == 0) part[warp][t] = ss[t];
  }
  __syncthreads();
  if (threadIdx.x < T) {
    float total = 0.f;
    for (int k = 0; k < warps; ++k) total += part[k][threadIdx.x];
    scale[threadIdx.x] = 1.0f / sqrtf(total / static_cast<float>(cols) + eps);
  }
  __syncthreads();
  if (blockIdx.x == 0 && normed_out != nullptr) {
    for (int t = 0; t < tokens; ++t) {
      const float inv = scale[t];
      for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const size_t at = static_cast<size_t>(t) * cols + i;
        normed_out[at] = nw[i] * (x[at] * inv);
      }
    }
  }
  return scale;
}

// y[t, rows] (=|+=) x[t, cols] . W^T for up to T tokens. Each block takes kGroupRows rows at a time; its
// threads split the columns 16 bytes each, so every thread keeps kGroupRows weight loads in flight, and
// the partial sums meet in shared memory in a fixed order (results do not depend on the grid). The grid
// is at most what the GPU holds at once and walks the row groups, requesting the next group's weights
// before computing the current one: no second wave, no block launches in the middle of the stream. This
// layout read 21 MB of weights at ~3 TB/s where one warp per row managed ~1.9 (bench/gpu_gemv_l2_bench).
//
// With kNorm the block first stages x * norm_weight in shared memory (StageNormed); the 1/rms scale is
// applied to the finished sums (a per-token factor), so no step waits on the reduction before the
// products start.
template <typename W, int T, bool kNorm, bool kTopK>
__global__ void __launch_bounds__(kRowThreads)
    GemvKernel(const W* __restrict__ w, const float* __restrict__ x, int rows, int cols, int tokens,
               float* __restrict__ y, bool accumulate, const float* __restrict__ nw, float eps,
               float* __restrict__ normed_out, GemvTopK topk) {
  constexpr int kElems = 16 / sizeof(W);
  constexpr int R = kGroupRows;
  extern __shared__ float xs[];  // kNorm: [tokens, cols] of x * norm weight
  __shared__ float red[kRowWarps][R * T];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int chunks = cols / kElems, groups = (rows + R - 1) / R;
  int g = blockIdx.x;
  uint4 v[R];
  // Rows past the end read the last row again; their sums are dropped.
  auto load = [&](int group, int c) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = min(group * R + r, rows - 1);
      v[r] = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(row) * cols) + c);
    }
  };
  // The weights do not depend on earlier kernels: the first group's are requested before the wait.
  if (g < groups && threadIdx.x < chunks) load(g, threadIdx.x);
  PdlWait();
  PdlTrigger();
  if constexpr (kTopK) {
    // The last block to start stores `soon` (linear.h), a hint without data, so without a fence;
    // starts count in the high half of blocks_done, finishes in the low half.
    if (topk.soon.counter != nullptr && threadIdx.x == 0 &&
        atomicAdd(topk.blocks_done, kBlockStarted) / kBlockStarted == gridDim.x - 1) {
      StoreCounter(topk.soon, StoreOrder::kRelaxed);
    }
  }
  const float* scale = nullptr;
  if constexpr (kNorm) scale = StageNormed<T>(x, nw, cols, tokens, eps, normed_out, xs);
  const float* xsrc = kNorm ? xs : x;
  while (g < groups) {
    float acc[R][T];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int t = 0; t < T; ++t) acc[r][t] = 0.f;
    }
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        if (t >= tokens) break;
        const float* xc = xsrc + static_cast<size_t>(t) * cols + c * kElems;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r][t] += Dot16(v[r], xc, W());
      }
      int nc = c + blockDim.x, ng = g;
      if (nc >= chunks) {
        nc = threadIdx.x;
        ng = g + gridDim.x;
      }
      if (ng < groups && nc < chunks) load(ng, nc);
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float s = WarpSum(acc[r][t]);
        if (lane == 0) red[warp][r * T + t] = s;
      }
    }
    __syncthreads();
    if (threadIdx.x < R * T) {
      const int r = threadIdx.x / T, t = threadIdx.x % T, row = g * R + r;
      if (t < tokens && row < rows) {
        float s = 0.f;
        for (int k = 0; k < warps; ++k) s += red[k][threadIdx.x];
        if constexpr (kNorm) s *= scale[t];
        float* dst = y + static_cast<size_t>(t) * rows + row;
        *dst = accumulate ? *dst + s : s;
      }
    }
    __syncthreads();  // red[] is reused by the next group
    g += gridDim.x;
  }
  if constexpr (kTopK) {
    // The router's epilogue: the last block to finish routes every token (one warp each) from the
    // logits all blocks wrote, sparing a kernel and a dependent launch per MoE layer.
    // With a ready counter to store, block 0's normalised rows must be visible at its scope.
    __shared__ bool last;
    FenceForStore(topk.ready);
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(topk.blocks_done, 1u) % kBlockStarted == gridDim.x - 1;
    __syncthreads();
    if (last) {
      __threadfence();
      for (int t = warp; t < tokens; t += warps) {
        WarpRouteTopK(y + static_cast<size_t>(t) * rows, rows, topk.top_k, topk.norm,
                      topk.ids + static_cast<size_t>(t) * topk.top_k,
                      topk.weights + static_cast<size_t>(t) * topk.top_k);
      }
      if (threadIdx.x == 0) *topk.blocks_done = 0u;  // every block has started and finished
      if (topk.ready.counter != nullptr) {
        FenceForStore(topk.ready);
        __syncthreads();
        if (threadIdx.x == 0) StoreCounter(topk.ready);
      }
    }
  }
}

// The router for one token on one cluster of kRouterCluster blocks (GemvTopK::one_cluster): block b
// takes experts [b R, b R + R) whole, every weight load requested before the wait for the earlier
// kernels, and writes its logits into block 0's shared memory as well as to y; after a cluster barrier
// block 0 routes from there. The sums are GemvKernel's, in its order, so the logits are the same bits.
constexpr int kRouterCluster = 8;

template <typename W>
__global__ void __launch_bounds__(kRowThreads)
    RouterClusterKernel(const W* __restrict__ w, const float* __restrict__ x, int rows, int cols, float* __restrict__ y,
                        const float* __restrict__ nw, float eps, float* __restrict__ normed_out, GemvTopK topk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kElems = 16 / sizeof(W), R = kClusterRouterExperts / kRouterCluster;
  extern __shared__ float xs[];  // [cols] of x * norm weight
  __shared__ float red[kRowWarps][R];
  __shared__ float logits[kClusterRouterExperts];  // block 0's: every block's experts
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int chunks = cols / kElems, r0 = blockIdx.x * R;
  uint4 v[R];
  auto load = [&](int c) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = min(r0 + r, rows - 1);  // rows past the end read the last again; dropped
      v[r] = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(row) * cols) + c);
    }
  };
  if (threadIdx.x < chunks) load(threadIdx.x);
  // This block has started, so the others may write into block 0's shared memory once they wait.
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  PdlWait();
  PdlTrigger();
  if (blockIdx.x == 0 && threadIdx.x == 0 && topk.soon.counter != nullptr) {
    StoreCounter(topk.soon, StoreOrder::kRelaxed);
  }
  const float* scale = StageNormed<1>(x, nw, cols, 1, eps, normed_out, xs);
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] += Dot16(v[r], xs + c * kElems, W());
    if (c + static_cast<int>(blockDim.x) < chunks) load(c + blockDim.x);
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const float s = WarpSum(acc[r]);
    if (lane == 0) red[warp][r] = s;
  }
  __syncthreads();
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
  float* leader = cooperative_groups::this_cluster().map_shared_rank(logits, 0);
  if (threadIdx.x < R && r0 + static_cast<int>(threadIdx.x) < rows) {
    float s = 0.f;
    for (int k = 0; k < warps; ++k) s += red[k][threadIdx.x];
    s *= scale[0];
    y[r0 + threadIdx.x] = s;
    leader[r0 + threadIdx.x] = s;
  }
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
  if (blockIdx.x != 0) return;
  if (warp == 0) {
    WarpRouteTopKOf<kClusterRouterExperts / 32, false>(logits, rows, topk.top_k, topk.norm, topk.ids, topk.weights);
  }
  if (topk.ready.counter != nullptr) {
    FenceForStore(topk.ready);  // the routing and block 0's normalised rows
    __syncthreads();
    if (threadIdx.x == 0) StoreCounter(topk.ready);
  }
#endif
}

// RouterClusterKernel's block and shared memory for rows of `cols`, with the kernel allowed that much
// shared memory, if this GPU can hold one such cluster at all (not so on a partition with fewer SMs to a
// GPC, say); null otherwise. Worked out once per row width.
struct RouterClusterShape {
  int threads = 0;
  size_t smem = 0;
};

template <typename W>
const RouterClusterShape* RouterClusterFor(int cols) {
  static int asked_cols = -1;
  static RouterClusterShape shape;
  static bool fits = false;
  if (cols == asked_cols) return fits ? &shape : nullptr;
  shape = {RowThreads(cols / (16 / static_cast<int>(sizeof(W)))), static_cast<size_t>(cols) * sizeof(float)};
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kRouterCluster);
  config.blockDim = dim3(shape.threads);
  config.dynamicSmemBytes = shape.smem;
  cudaLaunchAttribute attribute = ClusterAttribute(kRouterCluster);
  config.attrs = &attribute;
  config.numAttrs = 1;
  int clusters = 0;
  cudaError_t err = cudaSuccess;
  if (shape.smem > 48 * 1024) {
    err = cudaFuncSetAttribute(RouterClusterKernel<W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(shape.smem));
  }
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveClusters(&clusters, RouterClusterKernel<W>, &config);
  if (err != cudaSuccess) cudaGetLastError();  // not sticky: take the other form
  asked_cols = cols;
  fits = err == cudaSuccess && clusters > 0;
  return fits ? &shape : nullptr;
}

template <typename W>
cudaError_t LaunchRouterCluster(const RouterClusterShape& shape, const DeviceMatrix& m, const float* x, float* y,
                                const GemvNorm& norm, const GemvTopK& topk, cudaStream_t stream) {
  return LaunchPdlClustered(kRouterCluster, RouterClusterKernel<W>, dim3(kRouterCluster), dim3(shape.threads),
                            shape.smem, stream, static_cast<const W*>(m.data), x, static_cast<int>(m.rows),
                            static_cast<int>(m.cols), y, norm.weight, norm.eps, norm.normed_out, topk);
}

// The cluster form's shape where it runs for this router (RouterRunsOnOneCluster), else null.
const RouterClusterShape* RouterClusterPlan(const DeviceMatrix& w, int tokens, const GemvTopK* topk) {
  if (topk == nullptr || !topk->one_cluster || tokens != 1 || w.rows > kClusterRouterExperts || !ClustersSupported()) {
    return nullptr;
  }
  return w.bf16 ? RouterClusterFor<__nv_bfloat16>(static_cast<int>(w.cols))
                : RouterClusterFor<float>(static_cast<int>(w.cols));
}

template <typename W, int T, bool kNorm, bool kTopK>
cudaError_t LaunchGemvVariant(const DeviceMatrix& m, const float* x, int tokens, float* y, bool acc,
                              const GemvNorm* norm, const GemvTopK* topk, cudaStream_t stream) {
  const W* w = static_cast<const W*>(m.data);
  const int rows = static_cast<int>(m.rows), cols = static_cast<int>(m.cols);
  constexpr int kElems = 16 / sizeof(W);
  const int chunks = cols / kElems;
  const int threads = RowThreads(chunks);
  const size_t smem = kNorm ? static_cast<size_t>(tokens) * cols * sizeof(float) : 0;
  auto kernel = GemvKernel<W, T, kNorm, kTopK>;
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  int grid = 0;  // at most one resident wave (see the kernel)
  const cudaError_t err = ResidentGrid(kernel, threads, smem, (rows + kGroupRows - 1) / kGroupRows, &grid);
  if (err != cudaSuccess) return err;
  if (kTopK && grid >= static_cast<int>(kBlockStarted)) return cudaErrorInvalidValue;
  return LaunchPdl(kernel, dim3(grid), dim3(threads), smem, stream, w, x, rows, cols, tokens, y, acc,
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

bool RouterRunsOnOneCluster(const DeviceMatrix& w, int tokens, const GemvTopK* topk) {
  return RouterClusterPlan(w, tokens, topk) != nullptr;
}

cudaError_t LaunchGemv(const DeviceMatrix& w, const float* x, int tokens, float* y, bool accumulate,
                       const GemvNorm* norm, cudaStream_t stream, const GemvTopK* topk) {
  if (tokens <= 0 || tokens > kGemvMaxTokens || w.rows <= 0 || w.rows > INT32_MAX || w.cols % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  if (topk != nullptr && (norm == nullptr || w.rows > kGemvRouterMaxExperts || topk->top_k > w.rows ||
                          topk->blocks_done == nullptr || accumulate)) {
    return cudaErrorInvalidValue;
  }
  if (const RouterClusterShape* shape = RouterClusterPlan(w, tokens, topk)) {
    return w.bf16 ? LaunchRouterCluster<__nv_bfloat16>(*shape, w, x, y, *norm, *topk, stream)
                  : LaunchRouterCluster<float>(*shape, w, x, y, *norm, *topk, stream);
  }
  return w.bf16 ? LaunchGemvTyped<__nv_bfloat16>(w, x, tokens, y, accumulate, norm, topk, stream)
                : LaunchGemvTyped<float>(w, x, tokens, y, accumulate, norm, topk, stream);
}

cudaError_t LaunchToBf16(const float* x, size_t n, __nv_bfloat16* y, cudaStream_t stream) {
  ToBf16Kernel<<<static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 4096)), 256, 0, stream>>>(x, n, y);
  return cudaGetLastError();
}

}  // namespace pinmoe
