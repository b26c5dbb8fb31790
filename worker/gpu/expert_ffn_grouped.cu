#include <mma.h>

#include "worker/gpu/expert_ffn.h"

namespace pinmoe {
namespace {

using namespace nvcuda;

constexpr int kBM = kGroupedTileRows, kBN = 64, kBK = 32;
constexpr int kLds = kBK + 8;  // bf16 row stride in shared memory: 80 bytes, 16-byte aligned rows
constexpr int kThreads = 128;  // 4 warps, 2 x 2, each 32 x 32 of the tile

__device__ __forceinline__ float Silu(float x) { return x / (1.f + __expf(-x)); }

__global__ void SortPairsKernel(ExpertFfnArgs a, GroupedFfnScratch s) {
  extern __shared__ int counts[];  // [num_experts] counts, then [num_experts] cursors
  int* cursor = counts + a.num_experts;
  const int pairs = a.tokens * a.top_k;
  for (int e = threadIdx.x; e < a.num_experts; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = a.routing[p];
    if (e >= 0 && e < a.num_experts && a.experts[e].gate != nullptr) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int offset = 0, tiles = 0;
    for (int e = 0; e < a.num_experts; ++e) {
      cursor[e] = offset;
      for (int r = 0; r < counts[e]; r += kBM) {
        s.tile_expert[tiles] = e;
        s.tile_row0[tiles] = offset + r;
        s.tile_rows[tiles] = min(kBM, counts[e] - r);
        ++tiles;
      }
      offset += counts[e];
    }
    *s.num_tiles = tiles;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = a.routing[p];
    if (e >= 0 && e < a.num_experts && a.experts[e].gate != nullptr) s.sorted_pair[atomicAdd(&cursor[e], 1)] = p;
  }
}

// One k-step's B tile: rows n0.. of w [N, K] (bf16), columns k0..k0+kBK, zero outside.
__device__ __forceinline__ void LoadB(const __nv_bfloat16* w, int N, int K, int n0, int k0, __nv_bfloat16* bs) {
  for (int i = threadIdx.x; i < kBN * kBK / 8; i += kThreads) {
    const int r = i / (kBK / 8), c8 = i % (kBK / 8);
    const int n = n0 + r, k = k0 + c8 * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (n < N && k < K) v = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(n) * K + k));
    *reinterpret_cast<uint4*>(bs + r * kLds + c8 * 8) = v;
  }
}

// grid: (max_tiles, ceil(inter / kBN))
__global__ void __launch_bounds__(kThreads) GroupedGateUpKernel(ExpertFfnArgs a, GroupedFfnScratch s) {
  const int tile = blockIdx.x;
  if (tile >= *s.num_tiles) return;
  const int e = s.tile_expert[tile], row0 = s.tile_row0[tile], rows = s.tile_rows[tile];
  const int n0 = blockIdx.y * kBN, K = a.hidden, N = a.inter;
  const GpuExpert ex = a.experts[e];
  const auto* gate = static_cast<const __nv_bfloat16*>(ex.gate);
  const auto* up = static_cast<const __nv_bfloat16*>(ex.up);
  // Operand tiles during the k loop, the two fp32 result tiles after it.
  __shared__ __align__(128) unsigned char smem[2 * kBM * kBN * sizeof(float)];
  __shared__ int token[kBM];
  auto* as = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* gs = as + kBM * kLds;
  auto* us = gs + kBN * kLds;
  if (threadIdx.x < kBM) token[threadIdx.x] = threadIdx.x < rows ? s.sorted_pair[row0 + threadIdx.x] / a.top_k : -1;
  __syncthreads();
  const int warp = threadIdx.x / 32, wy = warp / 2, wx = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> cg[2][2], cu[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(cg[i][j], 0.f);
      wmma::fill_fragment(cu[i][j], 0.f);
    }
  }
  for (int k0 = 0; k0 < K; k0 += kBK) {
    for (int i = threadIdx.x; i < kBM * kBK / 4; i += kThreads) {
      const int r = i / (kBK / 4), c4 = i % (kBK / 4), k = k0 + c4 * 4;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (token[r] >= 0 && k < K) v = *reinterpret_cast<const float4*>(a.x + static_cast<size_t>(token[r]) * K + k);
      __nv_bfloat16* d = as + r * kLds + c4 * 4;
      d[0] = __float2bfloat16(v.x);
      d[1] = __float2bfloat16(v.y);
      d[2] = __float2bfloat16(v.z);
      d[3] = __float2bfloat16(v.w);
    }
    LoadB(gate, N, K, n0, k0, gs);
    LoadB(up, N, K, n0, k0, us);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wy * 32 + i * 16) * kLds + kk, kLds);
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fg, fu;
        wmma::load_matrix_sync(fg, gs + (wx * 32 + j * 16) * kLds + kk, kLds);
        wmma::load_matrix_sync(fu, us + (wx * 32 + j * 16) * kLds + kk, kLds);
        for (int i = 0; i < 2; ++i) {
          wmma::mma_sync(cg[i][j], fa[i], fg, cg[i][j]);
          wmma::mma_sync(cu[i][j], fa[i], fu, cu[i][j]);
        }
      }
    }
    __syncthreads();
  }
  float* out_g = reinterpret_cast<float*>(smem);
  float* out_u = out_g + kBM * kBN;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const int off = (wy * 32 + i * 16) * kBN + wx * 32 + j * 16;
      wmma::store_matrix_sync(out_g + off, cg[i][j], kBN, wmma::mem_row_major);
      wmma::store_matrix_sync(out_u + off, cu[i][j], kBN, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
    const int r = idx / kBN, c = idx % kBN, n = n0 + c;
    if (r < rows && n < N) {
      s.act[static_cast<size_t>(row0 + r) * N + n] = __float2bfloat16(Silu(out_g[idx]) * out_u[idx]);
    }
  }
}

// grid: (max_tiles, ceil(hidden / kBN))
__global__ void __launch_bounds__(kThreads) GroupedDownKernel(ExpertFfnArgs a, GroupedFfnScratch s) {
  const int tile = blockIdx.x;
  if (tile >= *s.num_tiles) return;
  const int e = s.tile_expert[tile], row0 = s.tile_row0[tile], rows = s.tile_rows[tile];
  const int n0 = blockIdx.y * kBN, K = a.inter, N = a.hidden;
  const auto* down = static_cast<const __nv_bfloat16*>(a.experts[e].down);
  __shared__ __align__(128) unsigned char smem[kBM * kBN * sizeof(float)];
  auto* as = reinterpret_cast<__nv_bfloat16*>(smem);
  auto* bs = as + kBM * kLds;
  const int warp = threadIdx.x / 32, wy = warp / 2, wx = warp % 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.f);
  }
  for (int k0 = 0; k0 < K; k0 += kBK) {
    for (int i = threadIdx.x; i < kBM * kBK / 8; i += kThreads) {
      const int r = i / (kBK / 8), c8 = i % (kBK / 8), k = k0 + c8 * 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < rows && k < K) v = *reinterpret_cast<const uint4*>(s.act + static_cast<size_t>(row0 + r) * K + k);
      *reinterpret_cast<uint4*>(as + r * kLds + c8 * 8) = v;
    }
    LoadB(down, N, K, n0, k0, bs);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], as + (wy * 32 + i * 16) * kLds + kk, kLds);
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, bs + (wx * 32 + j * 16) * kLds + kk, kLds);
        for (int i = 0; i < 2; ++i) wmma::mma_sync(c[i][j], fa[i], fb, c[i][j]);
      }
    }
    __syncthreads();
  }
  float* out = reinterpret_cast<float*>(smem);
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(out + (wy * 32 + i * 16) * kBN + wx * 32 + j * 16, c[i][j], kBN, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kBM * kBN; idx += kThreads) {
    const int r = idx / kBN, col = idx % kBN, n = n0 + col;
    if (r < rows && n < N) {
      const int pair = s.sorted_pair[row0 + r];
      a.out[static_cast<size_t>(pair) * N + n] = out[idx];
    }
  }
}

}  // namespace

cudaError_t LaunchExpertFfnGrouped(const ExpertFfnArgs& a, const GroupedFfnScratch& s, cudaStream_t stream) {
  // No in-kernel wait here (ExpertFfnArgs::ready): the caller gates the stream.
  if (a.fp32_weights || a.hidden % 8 != 0 || a.inter % 8 != 0 || a.tokens <= 0 || a.top_k <= 0 ||
      a.ready.counter != nullptr) {
    return cudaErrorInvalidValue;
  }
  const int pairs = a.tokens * a.top_k;
  SortPairsKernel<<<1, 1024, 2 * a.num_experts * sizeof(int), stream>>>(a, s);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int max_tiles = GroupedMaxTiles(pairs, a.num_experts);
  GroupedGateUpKernel<<<dim3(max_tiles, (a.inter + kBN - 1) / kBN), kThreads, 0, stream>>>(a, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  GroupedDownKernel<<<dim3(max_tiles, (a.hidden + kBN - 1) / kBN), kThreads, 0, stream>>>(a, s);
  return cudaGetLastError();
}

}  // namespace pinmoe
