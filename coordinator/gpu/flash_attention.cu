#include "coordinator/gpu/flash_attention.h"

#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>

#include "coordinator/gpu/kv_cache.cuh"

namespace pinmoe {
namespace {

using namespace nvcuda;

constexpr int kTile = 64;     // queries and keys per tile
constexpr int kThreads = 128;  // 4 warps, 2 x 2 over each 64-row tile
constexpr int kLdp = kTile + 8;

template <int HD>
struct Smem {
  static constexpr int kLdh = HD + 8;  // bf16 row stride of the Q, K, V tiles
  __nv_bfloat16 q[kTile * kLdh];
  __nv_bfloat16 k[kTile * kLdh];
  __nv_bfloat16 v[kTile * kLdh];
  float s[kTile * kTile];
  __nv_bfloat16 p[kTile * kLdp];
  float o[kTile * HD];
  float m[kTile], l[kTile];
};

// grid: (ceil(tokens / kTile), heads); cache elements of type C.
template <int HD, typename C>
__global__ void __launch_bounds__(kThreads) FlashAttentionKernel(FlashAttentionArgs a) {
  extern __shared__ __align__(128) unsigned char raw[];
  Smem<HD>& sm = *reinterpret_cast<Smem<HD>*>(raw);
  constexpr int kLdh = Smem<HD>::kLdh;
  const int qt = blockIdx.x, h = blockIdx.y, g = h / (a.heads / a.kv_heads);
  const int t0 = qt * kTile;
  const int rows = min(kTile, a.tokens - t0);
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  for (int i = threadIdx.x; i < kTile * HD; i += kThreads) {
    const int r = i / HD, d = i % HD;
    const float v = r < rows ? a.q[(static_cast<size_t>(t0 + r) * a.heads + h) * HD + d] * scale : 0.f;
    sm.q[r * kLdh + d] = __float2bfloat16(v);
    sm.o[i] = 0.f;
  }
  if (threadIdx.x < kTile) {
    sm.m[threadIdx.x] = -INFINITY;
    sm.l[threadIdx.x] = 0.f;
  }
  const int last_position = a.first_position + t0 + rows - 1;
  const int key_tiles = last_position / kTile + 1;
  const int warp = threadIdx.x / 32, wy = warp / 2, wx = warp % 2;
  for (int kt = 0; kt < key_tiles; ++kt) {
    const int p0 = kt * kTile;
    for (int i = threadIdx.x; i < kTile * HD; i += kThreads) {
      const int j = i / HD, d = i % HD, p = p0 + j;
      float kv = 0.f, vv = 0.f;
      if (p <= last_position) {
        const size_t off = (static_cast<size_t>(p) * a.kv_heads + g) * HD + d;
        kv = CacheLoad(static_cast<const C*>(a.k_cache) + off);
        vv = CacheLoad(static_cast<const C*>(a.v_cache) + off);
      }
      sm.k[j * kLdh + d] = __float2bfloat16(kv);
      sm.v[j * kLdh + d] = __float2bfloat16(vv);
    }
    __syncthreads();
    // S = Q K^T: each warp a 32 x 32 quarter.
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.f);
      }
      for (int kk = 0; kk < HD; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], sm.q + (wy * 32 + i * 16) * kLdh + kk, kLdh);
        for (int j = 0; j < 2; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
          wmma::load_matrix_sync(fb, sm.k + (wx * 32 + j * 16) * kLdh + kk, kLdh);
          for (int i = 0; i < 2; ++i) wmma::mma_sync(c[i][j], fa[i], fb, c[i][j]);
        }
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
          wmma::store_matrix_sync(sm.s + (wy * 32 + i * 16) * kTile + wx * 32 + j * 16, c[i][j], kTile,
                                  wmma::mem_row_major);
        }
      }
    }
    __syncthreads();
    // Online softmax: two threads per query row, 32 keys each (partners are adjacent lanes).
    {
      const int r = threadIdx.x / 2, half = threadIdx.x % 2;
      const int position = a.first_position + t0 + r;
      float mx = -INFINITY;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        if (r < rows && p0 + c <= position) mx = fmaxf(mx, sm.s[r * kTile + c]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float old_m = sm.m[r];
      const float new_m = fmaxf(old_m, mx);
      float sum = 0.f;
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        float e = 0.f;
        if (r < rows && p0 + c <= position) e = __expf(sm.s[r * kTile + c] - new_m);
        const __nv_bfloat16 eb = __float2bfloat16(e);
        sm.p[r * kLdp + c] = eb;
        sum += __bfloat162float(eb);  // the sum of what the product will see
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float alpha = (r < rows && old_m != -INFINITY) ? __expf(old_m - new_m) : 0.f;
      for (int d = half * (HD / 2); d < (half + 1) * (HD / 2); ++d) sm.o[r * HD + d] *= alpha;
      __syncwarp();
      if (half == 0) {
        sm.l[r] = sm.l[r] * alpha + sum;
        sm.m[r] = r < rows ? new_m : old_m;
      }
    }
    __syncthreads();
    // O += P V: each warp 32 rows x HD/2 columns.
    {
      constexpr int kCols = HD / 2 / 16;
      for (int i = 0; i < 2; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fp[kTile / 16];
        for (int kk = 0; kk < kTile / 16; ++kk) {
          wmma::load_matrix_sync(fp[kk], sm.p + (wy * 32 + i * 16) * kLdp + kk * 16, kLdp);
        }
        for (int j = 0; j < kCols; ++j) {
          float* o = sm.o + (wy * 32 + i * 16) * HD + wx * (HD / 2) + j * 16;
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
          wmma::load_matrix_sync(c, o, HD, wmma::mem_row_major);
          for (int kk = 0; kk < kTile / 16; ++kk) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fv;
            wmma::load_matrix_sync(fv, sm.v + kk * 16 * kLdh + wx * (HD / 2) + j * 16, kLdh);
            wmma::mma_sync(c, fp[kk], fv, c);
          }
          wmma::store_matrix_sync(o, c, HD, wmma::mem_row_major);
        }
      }
    }
    __syncthreads();
  }
  for (int i = threadIdx.x; i < rows * HD; i += kThreads) {
    const int r = i / HD, d = i % HD;
    a.out[(static_cast<size_t>(t0 + r) * a.heads + h) * HD + d] = sm.o[i] / sm.l[r];
  }
}

template <int HD, typename C>
cudaError_t LaunchTyped(const FlashAttentionArgs& a, cudaStream_t stream) {
  const size_t smem = sizeof(Smem<HD>);
  cudaError_t err = cudaFuncSetAttribute(FlashAttentionKernel<HD, C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  FlashAttentionKernel<HD, C><<<dim3((a.tokens + kTile - 1) / kTile, a.heads), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <int HD>
cudaError_t Launch(const FlashAttentionArgs& a, cudaStream_t stream) {
  return a.cache_bf16 ? LaunchTyped<HD, __nv_bfloat16>(a, stream) : LaunchTyped<HD, float>(a, stream);
}

}  // namespace

cudaError_t LaunchFlashAttention(const FlashAttentionArgs& a, cudaStream_t stream) {
  if (a.tokens <= 0 || a.kv_heads <= 0 || a.heads % a.kv_heads != 0) return cudaErrorInvalidValue;
  switch (a.head_dim) {
    case 32:
      return Launch<32>(a, stream);
    case 64:
      return Launch<64>(a, stream);
    case 128:
      return Launch<128>(a, stream);
    case 256:
      return Launch<256>(a, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pinmoe
